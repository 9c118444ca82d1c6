"""The external application of benchmarks/client_rl.py: CartPole through the policy API alone.

Imports evolve_client (httpx), gymnasium and numpy: neither Ray nor Evolve's server code (it checks,
and says so in its result). Plays `--num-envs` episodes at once per stream, one batched /act per
vector step, in `--streams` threads (each its own PolicyClient and vector env, so that many
requests are in flight), until `--seconds` pass or the server goes away (the run ended: solved or
out of budget), then writes one JSON object to `--out`: steps, episodes, seconds, steps per second.
"""

import argparse
import json
import sys
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--out", required=True)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--seconds", type=float, default=900)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from evolve_client import PolicyClient, PolicyClientError
    from evolve_client.play import play

    stop = threading.Event()
    timer = threading.Timer(a.seconds, stop.set)
    timer.daemon = True  # the process ends with the play, not with the timer
    timer.start()
    lock = threading.Lock()
    returns: list[float] = []
    lengths: list[int] = []
    steps = [0] * a.streams
    ended: list[str] = []

    def heard(e) -> None:
        with lock:
            returns.append(e.episode_return)
            lengths.append(e.length)

    def stream(k: int) -> None:
        client = PolicyClient(a.url, client_name=f"bench-client-{k}", max_retries=8)
        try:
            summary = play("CartPole-v1", client, num_envs=a.num_envs, seed=a.seed + 1000 * k, stop=stop,
                           on_episode=heard)
            steps[k] = summary.steps
            ended.append("time")
        except PolicyClientError as exc:  # the run stopped serving: solved, or its budget is spent
            ended.append(f"server: {str(exc)[:200]}")
            stop.set()
        finally:
            client.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(k,)) for k in range(a.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    total = sum(steps) if all(steps) else sum(lengths)  # else: a stream stopped early; finished episodes' steps
    out = {"ended": ended[0] if ended else "?", "seconds": round(seconds, 2), "episodes": len(returns),
           "streams": a.streams, "episodes_per_request": a.num_envs, "steps": total,
           "steps_per_s": round(total / seconds, 1),
           "mean_return_last_100": round(sum(returns[-100:]) / len(returns[-100:]), 1) if returns else None,
           "imports_ray": "ray" in sys.modules,
           "imports_evolve_server": sorted(m for m in ("core", "cluster", "actors", "learners", "serving", "gate")
                                           if m in sys.modules)}
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
