"""Time to solve CartPole-v1: our RL loop (the cartpole preset: DQN through
rollout actors, durable replay, a Ray Train learner, the publisher and the
evaluator) against RLlib's PPO (new API stack, default PPOConfig, 1 env runner).

    .venv/bin/python benchmarks/rl_vs_rllib.py --json              # both, ~30 min worst case
    .venv/bin/python benchmarks/rl_vs_rllib.py --only rllib --json

Both run on the same machine with 2 CPUs for Ray, one after the other (never
at once), each with a wall-clock budget (`--budget-s`, default 900 s).

* ours: `python -m cluster.cli run configs/cartpole.yaml --budget-s B --run-dir TMP`
  as a subprocess; `summary.json` -> `loops.cartpole`.  ours_seconds is its
  `time_to_solve_s` (from the loop's start to the end of the confirmation of the
  first version whose greedy evaluation of `eval_episodes` episodes reached 475
  and whose mean over `confirm_episodes` (100) more episodes held it) if it
  solved, else the budget.  ours_wall_s is the whole subprocess, Ray start-up and shutdown included.
* rllib: `PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=1)`,
  everything else default (train batch 4000, 30 epochs of minibatches of 128,
  lr 5e-5, learner on the driver), built in this process after
  `ray.init(num_cpus=2)`, with torch on the driver (where PPO's learner runs)
  held to `--rllib-torch-threads` (default 1, like ours' learner and both
  sides' actors, where Ray sets OMP_NUM_THREADS=1): on a machine with few
  vCPUs, torch's default intra-op threads can make a small MLP's training step
  many times slower, which would measure the VM, not RLlib.
  `algo.train()` in a loop until
  `result["env_runners"]["episode_return_mean"]` >= 475 or the budget is spent.
  rllib_seconds counts from the first `train()` call (the algorithm is built,
  as ours' loop clock starts after the cluster is up) to the end of the
  iteration that reached 475, else the budget.  rllib_wall_s includes building it.

The criteria differ in kind and this is the honest reading of each system's own
"solved": RLlib's figure is the mean return of the training episodes (sampled
from the stochastic policy) that ended during that one iteration, at most the
last 100 of them -- in RLlib 2.60 the metric's window
(`metrics_num_episodes_for_smoothing`, 100) is emptied at every reduce, so it
is not a running 100-episode mean, and an iteration of 4000 steps near the end
ends only ~8 episodes of 500 (the log shows the count); ours is a separate
greedy evaluation of `eval_episodes` (10) episodes, confirmed over 100 more.  `ratio` = ours_seconds / rllib_seconds: below 1, ours solves
faster.  An unsolved side counts as the full budget, so a ratio involving one
is a bound, not a measurement (see ours_solved / rllib_solved).  The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOLVE_RETURN = 475.0


def log(msg: str) -> None:
    print(f"[rl_vs_rllib] {msg}", file=sys.stderr, flush=True)


# ---- ours ------------------------------------------------------------------------------
def loop_name(config: Path) -> str:
    import yaml

    return str(((yaml.safe_load(config.read_text()) or {}).get("rl") or {}).get("name", "cartpole"))


def read_ours(summary_path: Path, name: str, budget_s: float) -> dict[str, Any]:
    """(seconds, solved, the loop's summary) from a run's summary.json."""
    summary = json.loads(summary_path.read_text())
    loops = summary.get("loops") or {}
    if name not in loops:
        raise SystemExit(f"{summary_path}: no loops.{name} (loops: {sorted(loops)})")
    loop = loops[name]
    solved = bool(loop.get("solved"))
    seconds = float(loop["time_to_solve_s"]) if solved and loop.get("time_to_solve_s") is not None else float(budget_s)
    return {
        "seconds": seconds,
        "solved": solved and loop.get("time_to_solve_s") is not None,
        "env_steps_to_solve": loop.get("env_steps_to_solve") if solved else None,
        "best_eval_return": loop.get("best_eval_return"),
        "run": summary.get("run", {}),
    }


def ours_command() -> list[str]:
    return [sys.executable, "-m", "cluster.cli"]


def run_ours(config: Path, budget_s: float, keep_dir: str | None) -> dict[str, Any]:
    name = loop_name(config)
    with tempfile.TemporaryDirectory(prefix="evolve-bench-") as tmp:
        run_dir = Path(keep_dir or tmp)
        cmd = [*ours_command(), "run", str(config), "--budget-s", str(budget_s), "--run-dir", str(run_dir)]
        log(f"ours: {' '.join(cmd)}")
        t0 = time.perf_counter()
        # its progress lines go to our stderr: our stdout ends with the JSON line
        proc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr,
                              timeout=budget_s + 600, check=False)
        wall = time.perf_counter() - t0
        summary = run_dir / "summary.json"
        if not summary.exists():
            found = sorted(run_dir.rglob("summary.json"))
            if not found:
                raise SystemExit(f"ours: exit code {proc.returncode} and no summary.json under {run_dir}")
            summary = found[0]
        out = read_ours(summary, name, budget_s)
    out.update(wall_s=wall, returncode=proc.returncode)
    return out


# ---- rllib -----------------------------------------------------------------------------
def run_rllib(budget_s: float, torch_threads: int, env_id: str = "CartPole-v1") -> dict[str, Any]:
    import ray
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME, NUM_EPISODES,
    )

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)  # the learner runs in this process (num_learners=0)
    t_wall = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        config = PPOConfig().environment(env_id).env_runners(num_env_runners=1)
        algo = config.build_algo()
        build_s = time.perf_counter() - t_wall
        log(f"rllib: PPO built in {build_s:.1f}s (torch threads on the driver/learner: {torch.get_num_threads()})")
        t0 = time.perf_counter()
        solved, ret, steps, it, curve = False, None, 0, 0, []
        while time.perf_counter() - t0 < budget_s:
            result = algo.train()
            it += 1
            runners = result.get(ENV_RUNNER_RESULTS, {})
            ret = runners.get(EPISODE_RETURN_MEAN)
            steps = int(runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, steps))
            episodes = runners.get(NUM_EPISODES)
            elapsed = time.perf_counter() - t0
            curve.append({"elapsed_s": round(elapsed, 1), "env_steps": steps, "return_mean": ret, "episodes": episodes})
            log(f"rllib: iter {it:3d}  {elapsed:6.1f}s  env steps {steps}  "
                f"episode_return_mean {ret if ret is None else round(ret, 1)} over {episodes} episodes")
            if ret is not None and ret >= SOLVE_RETURN:
                solved = True
                break
        seconds = time.perf_counter() - t0 if solved else float(budget_s)
        algo.stop()
    finally:
        ray.shutdown()
    return {
        "seconds": seconds,
        "solved": solved,
        "iterations": it,
        "env_steps_to_solve": steps if solved else None,
        "last_return_mean": ret,
        "build_s": build_s,
        "torch_threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t_wall,
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="time to solve CartPole-v1: ours vs RLlib PPO")
    parser.add_argument("--budget-s", type=float, default=900.0, help="wall-clock budget of each side")
    parser.add_argument("--only", choices=["ours", "rllib"], help="run one side only")
    parser.add_argument("--config", default=str(ROOT / "configs" / "cartpole.yaml"), help="ours' preset")
    parser.add_argument("--ours-summary", help="read ours from this summary.json instead of running it")
    parser.add_argument("--keep-run-dir", help="ours: write the run here (kept) instead of a temp dir")
    parser.add_argument("--rllib-torch-threads", type=int, default=1,
                        help="torch threads of RLlib's learner (on the driver); 0 = torch's default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ours = rllib = None
    if args.only != "rllib":
        if args.ours_summary:
            ours = read_ours(Path(args.ours_summary), loop_name(Path(args.config)), args.budget_s)
            ours.update(wall_s=None, returncode=None)
        else:
            ours = run_ours(Path(args.config), args.budget_s, args.keep_run_dir)
        log(f"ours: solved={ours['solved']} seconds={ours['seconds']:.1f} "
            f"(best eval return {ours['best_eval_return']})")
    if args.only != "ours":
        rllib = run_rllib(args.budget_s, args.rllib_torch_threads)
        log(f"rllib: solved={rllib['solved']} seconds={rllib['seconds']:.1f} after {rllib['iterations']} iterations")

    def r(x: float | None, nd: int = 1) -> float | None:
        return None if x is None else round(x, nd)

    result = {
        "env": "CartPole-v1",
        "solve_return": SOLVE_RETURN,
        "budget_s": args.budget_s,
        "ours_seconds": r(ours and ours["seconds"]),
        "rllib_seconds": r(rllib and rllib["seconds"]),
        "ours_solved": ours and ours["solved"],
        "rllib_solved": rllib and rllib["solved"],
        "ratio": round(ours["seconds"] / rllib["seconds"], 3) if ours and rllib else None,
        "ours_wall_s": r(ours and ours["wall_s"]),
        "rllib_wall_s": r(rllib and rllib["wall_s"]),
        "ours_env_steps_to_solve": ours and ours["env_steps_to_solve"],
        "rllib_env_steps_to_solve": rllib and rllib["env_steps_to_solve"],
        "rllib_iterations": rllib and rllib["iterations"],
        "rllib_torch_threads": rllib and rllib["torch_threads"],
    }
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
