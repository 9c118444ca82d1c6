"""The external application of benchmarks/client_rl.py: CartPole through the policy API alone.

Imports evolve_client (httpx), gymnasium and numpy: neither Ray nor Evolve's server code (it checks,
and says so in its result). Plays `--num-envs` episodes at once, one batched /act per vector step,
until `--seconds` pass or the server goes away (the run ended: solved or out of budget), then
writes one JSON object to `--out`: steps, episodes, seconds, steps per second, the last returns.
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
    p.add_argument("--seconds", type=float, default=900)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from evolve_client import PolicyClient, PolicyClientError
    from evolve_client.play import play

    stop = threading.Event()
    timer = threading.Timer(a.seconds, stop.set)
    timer.daemon = True  # the process ends with the play, not with the timer
    timer.start()
    began, summary, ended = time.perf_counter(), None, "time"
    client = PolicyClient(a.url, client_name="bench-client", max_retries=8)
    returns: list[float] = []
    lengths: list[int] = []

    def heard(e) -> None:
        returns.append(e.episode_return)
        lengths.append(e.length)

    try:
        summary = play("CartPole-v1", client, num_envs=a.num_envs, seed=a.seed, stop=stop, on_episode=heard)
    except PolicyClientError as exc:  # the run stopped serving: solved, or its budget is spent
        ended = f"server: {str(exc)[:200]}"
    finally:
        stop.set()
    seconds = time.perf_counter() - began
    steps = summary.steps if summary is not None else sum(lengths)  # else: the finished episodes' steps
    out = {"ended": ended, "seconds": round(seconds, 2), "episodes": len(returns), "steps": steps,
           "steps_per_s": round(steps / seconds, 1),
           "mean_return_last_100": round(sum(returns[-100:]) / len(returns[-100:]), 1) if returns else None,
           "imports_ray": "ray" in sys.modules,
           "imports_evolve_server": sorted(m for m in ("core", "cluster", "actors", "learners", "serving", "gate")
                                           if m in sys.modules)}
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
