"""An RL policy taught by an external application through the API alone, against the same preset
learning from its rollout actors, and against RLlib's external-env path, in one run.

    .venv/bin/python benchmarks/client_rl.py --json [--budget-s 600] [--skip rllib]

Phases, one after another (never at once; each starts its own Ray):

* rollout: `evolve run configs/cartpole.yaml` (rollout actors, DQN) -> summary.json's
  `time_to_solve_s` and `env_steps_to_solve` (loop clock: from the loop's start to the end of the
  greedy confirmation over 100 episodes).
* client: the same preset with `loops.cartpole.experience=clients` (no rollout actors); once it
  serves, benchmarks/_client_player.py starts as a separate OS process (evolve_client, gymnasium,
  numpy: neither Ray nor Evolve's server code) and plays 32 episodes at once, one batched /act per
  vector step. Solved and timed as the rollout phase, by the same evaluator; its env steps are the
  client's stored steps.
* throughput: the client preset again with the replay table's rate limiter off
  (`samples_per_insert` unset), so the learner does not pace the client; the player runs for
  `--throughput-s` with 32 episodes per request, one request in flight and then `--streams`
  (each stream its own client and vector env): `client_steps_per_s` is the better of the two. The same
  again with the learner held (it waits for more rows than the phase stores): `client_steps_per_s_api_alone`,
  the API with the machine's 2 cores to itself. (While learning, the
  rate limiter holds every writer, rollout actors and clients alike, to the learner's pace:
  `client_steps_per_s_learning` is the client phase's figure.)
* rllib: benchmarks/rllib_external.py (RLlib's EnvRunnerServerForExternalInference with its
  example CartPole client, PPO as the example sets it) in a subprocess.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAYER = ROOT / "benchmarks" / "_client_player.py"
ENDPOINTS = "evolve: endpoints"


def log(msg: str) -> None:
    print(f"[client_rl] {msg}", file=sys.stderr, flush=True)


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def evolve_run(budget_s: float, sets: list[str], port: int, player_s: float | None = None,
               player_out: Path | None = None, streams: int = 1) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One `evolve run` of the cartpole preset; with `player_s`, the external client plays once it serves."""
    run_dir = Path(tempfile.mkdtemp(prefix="client_rl-"))
    cmd = [sys.executable, "-m", "cluster.cli", "run", "configs/cartpole.yaml", "--budget-s", str(budget_s),
           "--run-dir", str(run_dir), "--set", f"serving.http_port={port}"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    player, lines = None, []

    def read() -> None:
        nonlocal player
        for line in proc.stdout:
            lines.append(line)
            if ENDPOINTS in line and player_s is not None and player is None:
                url = f"http://127.0.0.1:{port}/v1/policies/cartpole"
                player = subprocess.Popen([sys.executable, str(PLAYER), url, "--out", str(player_out),
                                           "--seconds", str(player_s), "--num-envs", "32",
                                           "--streams", str(streams)], cwd=ROOT)
                log(f"external client started (pid {player.pid})")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc.wait(timeout=budget_s + 300)
    reader.join(timeout=10)
    played = None
    if player is not None:
        try:
            player.wait(timeout=120)  # it notices the server is gone within its retries
        except subprocess.TimeoutExpired:
            player.kill()
            log("the external client did not stop within 120 s of the run's end: killed")
        played = json.loads(player_out.read_text()) if player_out.is_file() else None
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"no summary.json; the run's tail:\n{''.join(lines[-30:])}")
    return json.loads(summary_path.read_text())["loops"]["cartpole"], played


def _best(result: dict[str, Any], prefix: str, streams: int) -> float | None:
    """The better of one stream and `streams` streams (None when neither played)."""
    got = [result.get(f"{prefix}{n}_streams") for n in {1, streams}]
    return max((v for v in got if v is not None), default=None)


def solve_figures(loop: dict[str, Any]) -> dict[str, Any]:
    return {"solved": bool(loop.get("solved")), "time_to_solve_s": loop.get("time_to_solve_s"),
            "env_steps_to_solve": loop.get("env_steps_to_solve")}


def rllib(budget_s: float, seed: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rllib_external.py"), "--budget-s",
                          str(budget_s), "--seed", str(seed)], cwd=ROOT, capture_output=True, text=True,
                         timeout=budget_s + 300)
    last = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not last:
        raise SystemExit(f"rllib_external.py printed no result:\n{out.stderr[-3000:]}")
    return json.loads(last[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=600)
    p.add_argument("--throughput-s", type=float, default=40)
    p.add_argument("--streams", type=int, default=4, help="the throughput phase's requests in flight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=8190)
    p.add_argument("--skip", action="append", default=[], choices=["rollout", "client", "throughput", "rllib"])
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    os.chdir(ROOT)
    result: dict[str, Any] = {"budget_s": a.budget_s, "loads": {}}
    tmp = Path(tempfile.mkdtemp(prefix="client_rl-player-"))
    if "rollout" not in a.skip:
        log("rollout phase")
        result["loads"]["rollout"] = load()
        loop, _ = evolve_run(a.budget_s, [], a.port)
        r = solve_figures(loop)
        result.update(rollout_solved=r["solved"], rollout_time_to_solve_s=r["time_to_solve_s"],
                      rollout_env_steps_to_solve=r["env_steps_to_solve"])
    if "client" not in a.skip:
        log("client phase")
        result["loads"]["client"] = load()
        loop, played = evolve_run(a.budget_s, ["loops.cartpole.experience=clients"], a.port, a.budget_s + 60,
                                  tmp / "client.json")
        c = solve_figures(loop)
        result.update(client_solved=c["solved"], client_time_to_solve_s=c["time_to_solve_s"],
                      client_env_steps_to_solve=c["env_steps_to_solve"], client_player=played,
                      client_steps_per_s_learning=(played or {}).get("steps_per_s"),
                      client_episodes=loop.get("client_episodes"))
    if "throughput" not in a.skip:
        log("throughput phase")
        result["loads"]["throughput"] = load()
        sets = ["loops.cartpole.experience=clients", "replay.tables.cartpole.samples_per_insert=null",
                "loops.cartpole.eval.stop_when_solved=false"]
        # the API alone: the learner waits for more rows than the phase can store, so the 2 cores
        # serve the client (a cluster's learners run on their own nodes)
        held = ["replay.tables.cartpole.capacity=1000000", "replay.tables.cartpole.min_size=900000"]
        for mode, extra in (("", []), ("api_alone_", held)):
            for streams in sorted({1, a.streams}):
                _, played = evolve_run(a.throughput_s + 60, sets + extra, a.port, a.throughput_s,
                                       tmp / f"throughput{mode}{streams}.json", streams=streams)
                result[f"throughput_player_{mode}{streams}"] = played
                result[f"client_steps_per_s_{mode}{streams}_streams"] = (played or {}).get("steps_per_s")
        result["client_steps_per_s"] = _best(result, "client_steps_per_s_", a.streams)
        result["client_steps_per_s_api_alone"] = _best(result, "client_steps_per_s_api_alone_", a.streams)
    if "rllib" not in a.skip:
        log("rllib phase")
        result["loads"]["rllib"] = load()
        r = rllib(a.budget_s, a.seed)
        result.update(rllib_solved=r.get("solved"), rllib_time_to_solve_s=r.get("time_to_solve_s"),
                      rllib_env_steps_to_solve=r.get("env_steps_to_solve"), rllib=r)
    ct, rt, lt = (result.get(k) for k in ("client_time_to_solve_s", "rollout_time_to_solve_s", "rllib_time_to_solve_s"))
    result["client_over_rollout"] = round(ct / rt, 3) if ct and rt else None
    result["client_over_rllib"] = round(ct / lt, 3) if ct and lt else None
    print(json.dumps(result) if a.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
