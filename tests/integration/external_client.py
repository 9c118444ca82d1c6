"""An external application for the client-episode tests: plays CartPole through the policy API alone.

Imports neither Ray nor Evolve. Each acknowledged step (the 200 answer to the call that completed
it) is appended to `--acks` as "episode_id step" and flushed, so a test that kills this process
knows exactly which steps the server acknowledged.

    python external_client.py URL --acks FILE --episodes N [--prefix P] [--hang-after-steps K]

`--hang-after-steps K`: after the N episodes, start one more and stop calling after K of its steps
(the process then waits to be killed, mid-episode).
"""

import argparse
import sys
import time

import gymnasium as gym
import httpx


def call(client, url, body):
    for _ in range(50):
        r = client.post(url, json=body)
        if r.status_code == 200:
            return r.json()
        if r.status_code not in (429, 503):
            sys.exit(f"{url} answered {r.status_code}: {r.text[:300]}")
        time.sleep(float(r.headers.get("retry-after", 1)))
    sys.exit(f"{url}: gave up after 50 tries")


def play(client, base, acks, name, hang_after=None):
    env = gym.make("CartPole-v1")
    obs, _ = env.reset()
    call(client, f"{base}/episodes", {"episode_id": name})
    step, reward = 0, None
    while True:
        answer = call(client, f"{base}/act", {"obs": obs.tolist(), "episode_id": name, "step": step,
                                              "reward": reward})
        if step > 0:
            acks.write(f"{name} {step - 1}\n")
            acks.flush()
        if hang_after is not None and step >= hang_after:
            print("hanging", flush=True)
            time.sleep(3600)
        obs, r, terminated, truncated, _ = env.step(answer["action"])
        reward = float(r)
        if terminated or truncated:
            call(client, f"{base}/episodes/end", {"episode_id": name, "reward": reward, "terminated": terminated,
                                                  "truncated": truncated, "final_obs": obs.tolist(), "step": step})
            acks.write(f"{name} {step}\n")
            acks.flush()
            return step + 1
        step += 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--acks", required=True)
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--prefix", default="ext")
    p.add_argument("--hang-after-steps", type=int, default=None)
    a = p.parse_args()
    with httpx.Client(timeout=30) as client, open(a.acks, "a") as acks:
        for i in range(a.episodes):
            play(client, a.url, acks, f"{a.prefix}-{i}")
        print("played", a.episodes, flush=True)
        if a.hang_after_steps is not None:
            play(client, a.url, acks, f"{a.prefix}-hang", a.hang_after_steps)


if __name__ == "__main__":
    main()
