"""Rollout throughput: env steps/s of ONE of our rollout actors (policy inference and
replay writes included) against the ceiling and against RLlib's env runner.

    .venv/bin/python benchmarks/rollout_throughput.py --json

Three numbers, all on the same gymnasium vector env (`--env`, `--num-envs`):

* ceiling: `gym.make_vec(env, num_envs=N, vectorization_mode="sync")` stepped
  with uniformly random actions in this process; no policy, nothing stored.
  No rollout loop can beat it on one core.
* ours: the real path. A local Ray (2 CPUs), 2 replay shards behind a
  `ReplayClient`, and one `RolloutActor` (epsilon-greedy `QPolicy` inference
  every vector step, one replay add per `steps_per_write` vector steps, or
  fewer while the store holds adds back when `min_steps_per_write` is set;
  nothing does here, so the actor runs at the maximum: `actor_steps_per_write`).  Its
  `stats()["env_steps"]` is read after a warm-up and again `--seconds` later.
  The shards run on the same two cores and do real work (validate, write an
  Arrow segment, flush) for every row, so this is what a run on this machine gets.
* rllib: RLlib's new-API-stack `SingleAgentEnvRunner` built from the default
  `PPOConfig()` for the same env with `num_envs_per_env_runner=N`, inside a
  1-CPU Ray actor as an Algorithm would place it (so torch runs 1 thread);
  `sample(num_timesteps=...)` timed inside the actor after a warm-up.  Its
  episodes are returned to nobody: shipping them to a learner is not counted.

A fourth figure splits ours' cost: ours_no_replay is the same RolloutWorker
run in this process with its batches dropped (inference, n-step returns and
building the Arrow batch, but no replay add, no Ray).

`ratio_to_ceiling` = ours / ceiling: the share of raw env speed left after
inference and replay writes (the target is >= 0.5).  If ours_no_replay is
well above ours, replay ingest is the limit, not the actor: every add has a
fixed cost on the shard whatever its size, so `--steps-per-write` (rows per
add) moves ours far more than anything in the actor.  The rllib figure is the
same quantity for RLlib's sampler, for scale.  Shared, busy CPUs make all three
noisy; compare figures from one run only.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[rollout_throughput] {msg}", file=sys.stderr, flush=True)


def rl_config(env_id: str, num_envs: int | None, steps_per_write: int | None = None):
    """configs/cartpole.yaml's `cartpole` loop where it exists (CartPole), else RLSection defaults."""
    from core.config.loader import load_config
    from core.config.rl import RLSection

    preset = ROOT / "configs" / "cartpole.yaml"
    if env_id == "CartPole-v1" and preset.exists():
        base = load_config(preset).loops["cartpole"].model_dump(mode="json")
    else:
        base = {"policy_id": "bench", "tables": {"transitions": "transitions"}}
    base["env_id"] = env_id
    if num_envs is not None:
        base["acting"] = {**base.get("acting", {}), "num_envs": num_envs}
    if steps_per_write is not None:
        base["acting"] = {**base.get("acting", {}), "steps_per_write": steps_per_write}
        base["acting"].pop("min_steps_per_write", None)
    return RLSection.model_validate(base)


def bench_ceiling(env_id: str, num_envs: int, seconds: float) -> float:
    import gymnasium as gym

    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    env.reset(seed=0)
    space = env.single_action_space
    rng = np.random.default_rng(0)
    discrete = isinstance(space, gym.spaces.Discrete)

    def actions():
        return rng.integers(0, space.n, num_envs) if discrete else env.action_space.sample()

    for _ in range(200):  # warm-up
        env.step(actions())
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            env.step(actions())
        steps += 100 * num_envs
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


class _Discard:
    """A writer that keeps nothing: the rollout loop without the replay store."""

    def add(self, table, batch, timeout_s=None):
        return None


def bench_ours_no_replay(cfg, seconds: float, warmup_s: float) -> float:
    """The plain RolloutWorker in this process, its batches dropped: what the actor
    itself costs, apart from replay ingest and Ray."""
    from actors.rollout import RolloutWorker
    from core.models.q import spec_for_env

    worker = RolloutWorker(cfg, spec_for_env(cfg.env_id, cfg.algo, cfg.hidden), "bench-local", _Discard())
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup_s:
        worker.run(cfg.acting.steps_per_write)
    steps0, t0 = worker.env_steps, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        worker.run(cfg.acting.steps_per_write)
    return (worker.env_steps - steps0) / (time.perf_counter() - t0)


def bench_ours(cfg, seconds: float, warmup_s: float) -> tuple[float, dict]:
    import ray

    from actors.replay_client import ReplayClient
    from actors.replay_shard import launch_shards
    from actors.rollout import RolloutActor
    from core.config.replay import ReplaySection, TableSection
    from core.models.q import obs_width, spec_for_env

    spec = spec_for_env(cfg.env_id, cfg.algo, cfg.hidden)
    rcfg = ReplaySection(
        num_shards=2,
        tables={cfg.table: TableSection(kind="transitions", obs_dim=obs_width(spec), capacity=200_000)},
    )
    with tempfile.TemporaryDirectory() as tmp:
        shards = launch_shards(rcfg, tmp, seed=0)
        client = ReplayClient(shards, rcfg, seed=0)
        client.info()  # shards up
        actor = RolloutActor.options(num_cpus=cfg.acting.actor_num_cpus).remote(
            cfg.model_dump(mode="json"), spec.to_dict(), "bench-0", client, None, 0
        )
        ray.get(actor.stats.remote())  # constructed: the loop is running
        time.sleep(warmup_s)
        first = ray.get(actor.stats.remote())
        t0 = time.perf_counter()
        time.sleep(seconds)
        last = ray.get(actor.stats.remote())
        dt = time.perf_counter() - t0
        if last["error"]:
            raise RuntimeError(f"rollout actor failed: {last['error']}")
        ray.get(actor.stop.remote())
        info = client.info()
        for handle in [actor, *shards]:
            ray.kill(handle, no_restart=True)
    return (last["env_steps"] - first["env_steps"]) / dt, {"stats": last, "replay_info": info}


class _RLlibSampler:
    """Builds a SingleAgentEnvRunner inside a Ray actor and times its sample() calls."""

    def __init__(self, env_id: str, num_envs: int):
        from ray.rllib.algorithms.ppo import PPOConfig
        from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

        config = PPOConfig().environment(env_id).env_runners(num_envs_per_env_runner=num_envs)
        self.runner = SingleAgentEnvRunner(config=config)

    def run(self, seconds: float, warmup_s: float, chunk: int) -> dict:
        import torch

        def sample() -> int:
            episodes = self.runner.sample(num_timesteps=chunk)
            return sum(len(e) for e in episodes)

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < warmup_s:
            sample()
            self.runner.get_metrics()  # an Algorithm drains these after every sample
        steps, busy = 0, 0.0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            steps += sample()
            busy += time.perf_counter() - t
            self.runner.get_metrics()  # outside the timed part
        return {"steps": steps, "seconds": busy, "torch_threads": torch.get_num_threads()}


def bench_rllib(env_id: str, num_envs: int, seconds: float, warmup_s: float, chunk: int) -> tuple[float, dict]:
    import ray

    sampler = ray.remote(num_cpus=1)(_RLlibSampler).remote(env_id, num_envs)
    out = ray.get(sampler.run.remote(seconds, warmup_s, chunk))
    ray.kill(sampler, no_restart=True)
    return out["steps"] / out["seconds"], out


def main() -> None:
    parser = argparse.ArgumentParser(description="rollout env steps/s: ours vs the raw env and RLlib's env runner")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, default=None, help="default: configs/cartpole.yaml's acting.num_envs")
    parser.add_argument("--steps-per-write", type=int, default=None,
                        help="vector steps per replay add (default: the preset's); ours only")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window of each of the three")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--rllib-chunk", type=int, default=1000, help="num_timesteps per RLlib sample() call")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = rl_config(args.env, args.num_envs, args.steps_per_write)
    log(f"{cfg.env_id}, {cfg.acting.num_envs} envs, steps_per_write {cfg.acting.steps_per_write}, hidden {cfg.hidden}")

    log("ceiling: raw vector env, random actions ...")
    ceiling = bench_ceiling(cfg.env_id, cfg.acting.num_envs, args.seconds)
    log(f"ceiling {ceiling:,.0f} steps/s")

    log("ours without replay: RolloutWorker in this process, batches dropped ...")
    ours_local = bench_ours_no_replay(cfg, args.seconds, args.warmup_s)
    log(f"ours without replay {ours_local:,.0f} steps/s")

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        log("ours: RolloutActor -> ReplayClient -> 2 shards ...")
        ours, extra = bench_ours(cfg, args.seconds, args.warmup_s)
        log(f"ours {ours:,.0f} steps/s (epsilon now {extra['stats']['epsilon']:.3f}, "
            f"{extra['stats']['rows_written']:,} rows written)")
        log("rllib: SingleAgentEnvRunner (default PPO module) ...")
        rllib, rinfo = bench_rllib(cfg.env_id, cfg.acting.num_envs, args.seconds, args.warmup_s, args.rllib_chunk)
        log(f"rllib {rllib:,.0f} steps/s (torch threads in its actor: {rinfo['torch_threads']})")
    finally:
        ray.shutdown()

    result = {
        "env": cfg.env_id,
        "num_envs": cfg.acting.num_envs,
        "steps_per_write": cfg.acting.steps_per_write,
        "min_steps_per_write": cfg.acting.min_steps_per_write,
        # the adaptive add size the actor ran at the end (nothing holds it back here: the maximum)
        "actor_steps_per_write": extra["stats"].get("steps_per_write"),
        "seconds": args.seconds,
        "ours_steps_per_s": round(ours),
        "ceiling_steps_per_s": round(ceiling),
        "rllib_steps_per_s": round(rllib),
        "ratio_to_ceiling": round(ours / ceiling, 3),
        "ours_no_replay_steps_per_s": round(ours_local),
        "no_replay_ratio_to_ceiling": round(ours_local / ceiling, 3),
        "rllib_ratio_to_ceiling": round(rllib / ceiling, 3),
        "ours_to_rllib": round(ours / rllib, 3),
    }
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
