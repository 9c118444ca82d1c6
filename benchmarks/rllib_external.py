"""Time and env steps to solve CartPole-v1 with RLlib's external-env path on the
new API stack: `EnvRunnerServerForExternalInference` (the RLlink protocol over
TCP) fed by RLlib's own example CartPole client running in a separate OS process.

    .venv/bin/python benchmarks/rllib_external.py --budget-s 600 [--seed 0]

What runs is RLlib's example `examples/envs/env_connecting_to_rllib_w_tcp_client.py`
(`--use-dummy-client`, its `--no-tune` loop of `algo.train()`):

* server: PPO's default config with the example's changes (`num_epochs=10`,
  `vf_loss_coeff=0.01`, `vf_share_layers=True`, observation/action spaces given
  by hand, `env_runner_cls=EnvRunnerServerForExternalInference`,
  `env_config={"port": P}`, 1 env runner, torch, no GPU). The remote env runner
  listens on P + 1 (its worker index); the local one on P takes no client.
* client: `examples/envs/classes/utils/dummy_external_client._dummy_external_client(P + 1)`,
  which builds the RLModule from the pickled config, samples actions itself
  (stochastic, `forward_exploration`), sends 4,000-step batches of episodes and
  blocks until the new weights come back. The example starts it in a thread of
  the driver; here it is a subprocess, so the client is an external OS process
  as Evolve's is and does not share the driver's GIL with PPO's learner.

Changed for the 2-core machine: `ray.init(num_cpus=2)`, torch held to one thread
on the driver (PPO's learner runs there) and in the client (a small MLP's step
on a VM with few vCPUs can be many times slower with torch's default threads;
see rl_vs_rllib.py), and a free port pair instead of the fixed 5555/5556 so
parallel runs on one host do not collide. `.debugging(seed=seed)` seeds the
server's module; the client seeds numpy and torch with `seed` (the example
seeds neither and leaves the env unseeded, as here).

Solved, as close to Evolve's rule as RLlib's loop allows: after each
`train()`, when `env_runners/episode_return_mean` (the client's stochastic
episodes that ended in that iteration) reaches 475, the current module plays
`confirm_episodes` greedy (argmax of its action logits) episodes of a local
gymnasium CartPole-v1; solved when their mean return is >= 475. The clock
starts when the algorithm build starts, after `ray.init` (`ray_init_s`
separately); start-up (build and client launch, `startup_s`) is counted; it
stops at the end of that confirmation. Env steps are RLlib's lifetime sampled
counter at that iteration. The budget covers the same clock. The last stdout
line is one JSON object (RLlib's local env runner may print a line before it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

SOLVE_RETURN = 475.0
CONFIRM_SEED_BASE = 10_000
CLIENT_CONNECT_TIMEOUT_S = 120.0

CLIENT_CODE = (
    "import sys, numpy as np, torch\n"
    "torch.set_num_threads(1)\n"
    "np.random.seed(int(sys.argv[2])); torch.manual_seed(int(sys.argv[2]))\n"
    "from ray.rllib.examples.envs.classes.utils.dummy_external_client import _dummy_external_client\n"
    "_dummy_external_client(int(sys.argv[1]))\n"
)


def log(msg: str) -> None:
    print(f"[rllib_external] {msg}", file=sys.stderr, flush=True)


def free_port_pair() -> int:
    """A port P with P and P + 1 both free (the local and the remote env runner)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("localhost", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("localhost", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of adjacent localhost ports")


def build_config(port: int, seed: int):
    """The example's server config, with this machine's resources."""
    import gymnasium as gym
    import numpy as np
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.external.env_runner_server_for_external_inference import (
        EnvRunnerServerForExternalInference,
    )

    return (
        PPOConfig()
        .framework("torch")
        .environment(
            # The example's space, bounds included; the default MLP reads only its shape.
            observation_space=gym.spaces.Box(float("-inf"), float("-inf"), (4,), np.float32),
            action_space=gym.spaces.Discrete(2),
            env_config={"port": port},
        )
        .env_runners(env_runner_cls=EnvRunnerServerForExternalInference, num_env_runners=1)
        .learners(num_gpus_per_learner=0)
        .resources(num_gpus=0)
        .training(num_epochs=10, vf_loss_coeff=0.01)
        .rl_module(model_config=DefaultModelConfig(vf_share_layers=True))
        .debugging(seed=seed)
    )


def start_client(port: int, seed: int, log_file) -> subprocess.Popen:
    """The example client as its own OS process; its output goes to `log_file`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT_CODE, str(port), str(seed)],
        stdout=log_file, stderr=subprocess.STDOUT, env=env,
    )


def loadavg() -> str | None:
    """The 1/5/15-minute load averages, for reading a timing on a shared machine."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def client_died(client: subprocess.Popen, log_path: str) -> RuntimeError:
    with open(log_path, errors="replace") as f:
        tail = f.read()[-2000:]
    return RuntimeError(f"external client exited with code {client.returncode}:\n{tail}")


def stop_client(client: subprocess.Popen) -> None:
    if client.poll() is None:
        client.terminate()
        try:
            client.wait(timeout=10)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()


def greedy_mean_return(module, episodes: int, seed: int) -> float:
    """Mean return of `episodes` greedy CartPole-v1 episodes, played side by side."""
    import gymnasium as gym
    import numpy as np
    import torch
    from ray.rllib.core import Columns

    envs = [gym.make("CartPole-v1") for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    returns = np.zeros(episodes)
    live = list(range(episodes))
    while live:
        batch = torch.tensor(np.array([obs[i] for i in live], np.float32))
        with torch.no_grad():
            logits = module.forward_inference({Columns.OBS: batch})[Columns.ACTION_DIST_INPUTS]
        actions = logits.argmax(dim=-1).tolist()
        still = []
        for i, action in zip(live, actions):
            obs[i], reward, terminated, truncated, _ = envs[i].step(action)
            returns[i] += reward
            if not (terminated or truncated):
                still.append(i)
        live = still
    for env in envs:
        env.close()
    return float(returns.mean())


def train_until_solved(algo, client, client_log: str, t_start: float, budget_s: float,
                       seed: int, confirm_episodes: int) -> dict[str, Any]:
    """`algo.train()` until a confirmed greedy solve or the budget; the curve and the outcome."""
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME, NUM_EPISODES,
    )

    out: dict[str, Any] = {"solved": False, "time_to_solve_s": None, "env_steps_to_solve": None,
                           "iterations": 0, "final_return_mean": None, "env_steps": 0,
                           "confirmations": [], "curve": []}
    while time.perf_counter() - t_start < budget_s:
        if client.poll() is not None:
            raise client_died(client, client_log)
        result = algo.train()
        out["iterations"] += 1
        runners = result.get(ENV_RUNNER_RESULTS, {})
        ret = runners.get(EPISODE_RETURN_MEAN)
        out["final_return_mean"] = ret
        out["env_steps"] = int(runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, out["env_steps"]))
        elapsed = time.perf_counter() - t_start
        out["curve"].append({"elapsed_s": round(elapsed, 1), "env_steps": out["env_steps"],
                             "return_mean": None if ret is None else round(ret, 1),
                             "episodes": runners.get(NUM_EPISODES)})
        log(f"iter {out['iterations']:3d}  {elapsed:6.1f}s  env steps {out['env_steps']}  "
            f"episode_return_mean {None if ret is None else round(ret, 1)} "
            f"over {runners.get(NUM_EPISODES)} episodes")
        if ret is None or ret < SOLVE_RETURN:
            continue
        confirm = greedy_mean_return(algo.get_module(), confirm_episodes, seed + CONFIRM_SEED_BASE)
        elapsed = time.perf_counter() - t_start
        out["confirmations"].append({"iteration": out["iterations"], "greedy_mean": confirm,
                                     "elapsed_s": round(elapsed, 1)})
        log(f"greedy confirmation over {confirm_episodes} episodes: {confirm:.1f}")
        if confirm >= SOLVE_RETURN:
            out.update(solved=True, time_to_solve_s=elapsed, env_steps_to_solve=out["env_steps"])
            break
    return out


def run_rllib_external(budget_s: float, seed: int = 0, confirm_episodes: int = 100) -> dict:
    """Solve CartPole-v1 through RLlib's external-inference EnvRunner and its example client."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # RLlink frames its messages with msgpack-numpy at both ends; ray[rllib] does not install it.
    if importlib.util.find_spec("msgpack_numpy") is None:
        raise SystemExit("rllib_external needs msgpack-numpy: pip install msgpack-numpy")
    import ray
    import torch

    if ray.is_initialized():
        raise RuntimeError("run_rllib_external starts its own Ray; call it with none initialized "
                           "in this process (or run it as a subprocess)")

    torch.set_num_threads(1)  # PPO's learner runs in this process (num_learners=0)
    port = free_port_pair()
    load_start = loadavg()
    t_init = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    t_start = time.perf_counter()
    ray_init_s = t_start - t_init
    client = None
    with tempfile.NamedTemporaryFile("w+b", prefix="rllib-external-client-", suffix=".log") as client_log:
        try:
            algo = build_config(port, seed).build_algo()
            client = start_client(port + 1, seed, client_log)
            startup_s = time.perf_counter() - t_start
            log(f"PPO built in {startup_s:.1f}s; client pid {client.pid} on port {port + 1}")
            out = train_until_solved(algo, client, client_log.name, t_start, budget_s,
                                     seed, confirm_episodes)
            stop_client(client)
            algo.stop()
        finally:
            if client is not None:
                stop_client(client)
            ray.shutdown()
    out.update(
        algo="PPO (RLlib 2.60 new API stack, EnvRunnerServerForExternalInference + "
             "dummy_external_client in a subprocess)",
        startup_s=round(startup_s, 1), ray_init_s=round(ray_init_s, 1),
        wall_s=round(time.perf_counter() - t_init, 1),
        loadavg_start=load_start, loadavg_end=loadavg(),
        budget_s=budget_s, seed=seed, confirm_episodes=confirm_episodes,
        solve_return=SOLVE_RETURN, ray_version=ray.__version__,
        notes=("trigger: RLlib's env_runners/episode_return_mean (stochastic client episodes "
               "ended in the iteration) >= 475; solved: greedy (argmax) mean over "
               f"{confirm_episodes} local CartPole-v1 episodes >= 475; clock from the start "
               "of the algorithm build (after ray.init) to the end of that confirmation; env steps: "
               "num_env_steps_sampled_lifetime at that iteration"),
    )
    if out["time_to_solve_s"] is not None:
        out["time_to_solve_s"] = round(out["time_to_solve_s"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="RLlib external-inference EnvRunner on CartPole-v1")
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall-clock budget, start-up included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confirm-episodes", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(run_rllib_external(args.budget_s, args.seed, args.confirm_episodes)))


if __name__ == "__main__":
    main()
