"""Replay insert / sample throughput: ours (durable, 2 shards, through the Ray client)
against RLlib's PrioritizedEpisodeReplayBuffer (in-process; what its DQN uses by default).

    .venv/bin/python benchmarks/replay_throughput.py --json

Both get the same CartPole-sized transitions in adds of `--add-rows` rows and
are sampled in batches of 256. Ours pays for more: every add is validated,
written to an Arrow segment and flushed before it is acknowledged, and crosses
a process boundary twice. The last line is one JSON object.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _transitions import cartpole_batch  # noqa: E402


def bench_ours(rows: int, add_rows: int, sample_s: float, batch: int, sampler: str) -> tuple[float, float]:
    import ray

    from actors.replay_client import ReplayClient
    from actors.replay_shard import launch_shards
    from core.replay.config import ReplayConfig, TableConfig

    cfg = ReplayConfig(num_shards=2, tables={"transitions": TableConfig(obs_dim=4, capacity=1_000_000, sampler=sampler)})
    with tempfile.TemporaryDirectory() as tmp:
        shards = launch_shards(cfg, tmp, seed=0)
        client = ReplayClient(shards, cfg, seed=0)
        client.info()  # shards up
        batches = [cartpole_batch(add_rows, i * add_rows) for i in range(rows // add_rows)]
        t0 = time.perf_counter()
        for b in batches:
            client.add("transitions", b)
        acked = client.flush()
        insert_rate = acked["accepted"] / (time.perf_counter() - t0)
        sampled, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < sample_s:
            sampled += client.sample("transitions", batch).num_rows
        sample_rate = sampled / (time.perf_counter() - t0)
        for s in shards:
            ray.kill(s, no_restart=True)
    return insert_rate, sample_rate


def bench_rllib(rows: int, add_rows: int, sample_s: float, batch: int, episode_len: int = 200) -> tuple[float, float]:
    import gymnasium as gym
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode
    from ray.rllib.utils.replay_buffers import PrioritizedEpisodeReplayBuffer

    rng = np.random.default_rng(0)
    obs_space, act_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2)

    def episode(n: int) -> SingleAgentEpisode:
        return SingleAgentEpisode(
            observations=list(rng.normal(size=(n + 1, 4)).astype(np.float32)),
            actions=list(rng.integers(0, 2, n)),
            rewards=[1.0] * n,
            terminated=True,
            observation_space=obs_space,
            action_space=act_space,
            len_lookback_buffer=0,
        ).to_numpy()

    per_add = max(1, add_rows // episode_len)
    adds = [[episode(episode_len) for _ in range(per_add)] for _ in range(rows // (per_add * episode_len))]
    buf = PrioritizedEpisodeReplayBuffer(capacity=1_000_000, alpha=0.6)
    t0 = time.perf_counter()
    for episodes in adds:
        buf.add(episodes)
    insert_rate = sum(e.env_steps() for a in adds for e in a) / (time.perf_counter() - t0)
    sampled, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < sample_s:
        buf.sample(num_items=batch, n_step=1, beta=0.4)
        sampled += batch
    return insert_rate, sampled / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description="replay throughput: ours vs RLlib")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--add-rows", type=int, default=4096, help="rows per add call")
    parser.add_argument("--batch", type=int, default=256, help="rows per sample call")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--sampler", default="prioritized", choices=["uniform", "prioritized"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        ours_insert, ours_sample = bench_ours(args.rows, args.add_rows, args.sample_s, args.batch, args.sampler)
    finally:
        ray.shutdown()
    rllib_insert, rllib_sample = bench_rllib(args.rows, args.add_rows, args.sample_s, args.batch)
    result = {
        "rows": args.rows,
        "add_rows": args.add_rows,
        "sample_batch": args.batch,
        "sampler": args.sampler,
        "ours_insert_rows_per_s": round(ours_insert),
        "ours_sample_rows_per_s": round(ours_sample),
        "rllib_insert_rows_per_s": round(rllib_insert),
        "rllib_sample_rows_per_s": round(rllib_sample),
        "insert_ratio": round(ours_insert / rllib_insert, 3),
        "sample_ratio": round(ours_sample / rllib_sample, 3),
    }
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
