"""The RL half of the adaptation benchmark: CartPole's physics change, the adaptive layer on or off.

    cartpole_drift(adapt=True, seed=0, budget_s=900, workdir=Path("/tmp/x"))

runs `python -m cluster.cli run configs/drift_cartpole.yaml` as a subprocess
(`--set loops.cartpole.adapt.enabled=true|false --set loops.cartpole.seed=SEED`, free ports, its own
run directory under `workdir`) until it stops by itself (recovered on the
changed physics) or at the budget, and returns `loops.cartpole.drift` of its
summary.json with the solve and the run's wall time:

    recovery_env_steps          env steps from the physics change to the first of `rl.drift.hold_evals`
                                (3) greedy evaluations in a row (10 episodes each, on the changed env)
                                at the solve return (475); None: not recovered within the budget
                                (or no change: never solved)
    detection_delay_env_steps   env steps from the change to the returns detector's first alarm
    alarms                      env steps of every alarm (adapt on; the detector is off without it)
    at_env_steps, env_steps_to_solve, recovered_at_env_steps, wall_s, stopped_by, ...

`benchmarks/adaptation.py` calls it twice (on, off) for `recovery_env_steps_on / _off`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/drift_cartpole.yaml"
LOOP = "cartpole"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cartpole_drift(adapt: bool, seed: int, budget_s: float, workdir: str | Path,
                   overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    run_dir = Path(workdir) / "run"
    cmd = [sys.executable, "-m", "cluster.cli", "run", CONFIG, "--budget-s", str(budget_s), "--run-dir", str(run_dir)]
    for o in (f"loops.{LOOP}.adapt.enabled={str(adapt).lower()}", f"loops.{LOOP}.seed={seed}", f"serving.http_port={free_port()}",
              f"serving.grpc_port={free_port()}", f"cluster.dashboard_port={free_port()}", *overrides):
        cmd += ["--set", o]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    started = time.time()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with open(Path(workdir) / "evolve.log", "w") as log:  # progress lines, kept for a look afterwards
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=budget_s + 600, check=False)
    summary_path = run_dir / "summary.json"
    if proc.returncode != 0 or not summary_path.exists():
        tail = (Path(workdir) / "evolve.log").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return figures(run_dir, seed, round(time.time() - started, 1))


def figures(run_dir: Path, seed: int, wall_s: float | None) -> dict[str, Any]:
    """`loops.cartpole.drift` of a finished run's summary.json, with the solve and the wall time."""
    summary = json.loads((run_dir / "summary.json").read_text())
    loop = summary["loops"][LOOP]
    drift = loop.get("drift") or {}
    return {
        **drift,
        "seed": seed,
        "solved": loop.get("solved"),
        "env_steps_to_solve": loop.get("env_steps_to_solve"),
        "time_to_solve_s": loop.get("time_to_solve_s"),
        "env_steps": loop.get("env_steps"),
        "stopped_by": summary["run"].get("stopped_by"),
        "wall_s": wall_s,
        "run_dir": str(run_dir),
    }


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="one drift_cartpole run; prints its figures as JSON")
    ap.add_argument("--adapt", choices=["on", "off"], default="on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=900)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    work = a.workdir or f"/tmp/evolve-drift-cartpole-{a.adapt}-{a.seed}"
    print(json.dumps(cartpole_drift(a.adapt == "on", a.seed, a.budget_s, work, tuple(a.set))))
