"""Replay insert / sample throughput: ours (durable, 2 shards, through the Ray client)
against RLlib's PrioritizedEpisodeReplayBuffer (in-process; what its DQN uses by default),
and what fsync costs.

    .venv/bin/python benchmarks/replay_throughput.py --json
    .venv/bin/python benchmarks/replay_throughput.py --fsync-only   # just the fsync on / off figures

Both get the same CartPole-sized transitions in adds of `--add-rows` rows and
are sampled in batches of 256. Ours pays for more: every add is validated,
written to an Arrow segment and flushed before it is acknowledged, and crosses
a process boundary twice. The last line is one JSON object.

fsync on / off: the same store with every add fsynced or only flushed, for two
writers: the transitions stream (adds of `--add-rows` rows, as above) and the
feedback joiner's group commits (`add_and_wait` of `--commit-rows` feedback rows,
one at a time, as the joiner writes them: feedback tables fsync by default).
Each prints rows/s both ways and the ratio on / off.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
    from core.config.replay import ReplaySection, TableSection

    cfg = ReplaySection(num_shards=2, tables={"transitions": TableSection(obs_dim=4, capacity=1_000_000, sampler=sampler)})
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


def feedback_columns(n: int, start: int) -> dict[str, list]:
    """n joined feedback rows, shaped as the joiner writes them (serving/event_join.py)."""
    now = dt.datetime.now(dt.timezone.utc)
    ids = range(start, start + n)
    return {"id": [f"feedback-e{i}" for i in ids], "table": ["feedback"] * n, "source": ["feedback"] * n,
            "actor_id": ["serve-bench"] * n, "policy_id": ["sentiment"] * n, "policy_version": [1] * n,
            "created_at": [now] * n, "event_id": [f"e{i}" for i in ids],
            "text": [f"质量很好，物流也快，第 {i} 条评论" for i in ids], "text_pair": [None] * n,
            "prediction": [1] * n, "probs": [[0.2, 0.8]] * n, "label": [1] * n, "reward": [None] * n,
            "propensity": [1.0] * n, "action_probs": [[0.0, 1.0]] * n}


def bench_fsync(fsync: bool, rows: int, add_rows: int, commits: int, commit_rows: int,
                directory: str | None) -> tuple[float, float]:
    """(transition rows/s in adds of add_rows, feedback rows/s in group commits of commit_rows), one
    store with every table's fsync set to `fsync`."""
    import ray

    from actors.replay_client import ReplayClient
    from actors.replay_shard import launch_shards
    from core.config.replay import ReplaySection, TableSection

    tables = {"transitions": TableSection(obs_dim=4, capacity=1_000_000, fsync=fsync),
              "feedback": TableSection(kind="feedback", capacity=1_000_000, fsync=fsync)}
    cfg = ReplaySection(num_shards=2, tables=tables)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        shards = launch_shards(cfg, tmp, seed=0)
        client = ReplayClient(shards, cfg, seed=0)
        client.info()  # shards up
        batches = [cartpole_batch(add_rows, i * add_rows) for i in range(rows // add_rows)]
        t0 = time.perf_counter()
        for b in batches:
            client.add("transitions", b)
        stream = client.flush()["accepted"] / (time.perf_counter() - t0)
        groups = [feedback_columns(commit_rows, i * commit_rows) for i in range(commits)]
        t0 = time.perf_counter()
        for g in groups:
            client.add_and_wait("feedback", g)
        feedback = commits * commit_rows / (time.perf_counter() - t0)
        for s in shards:
            ray.kill(s, no_restart=True)
    return stream, feedback


def fsync_figures(args: argparse.Namespace) -> dict:
    off = bench_fsync(False, args.rows, args.add_rows, args.commits, args.commit_rows, args.dir)
    on = bench_fsync(True, args.rows, args.add_rows, args.commits, args.commit_rows, args.dir)
    return {
        "fsync_stream_rows_per_s_off": round(off[0]), "fsync_stream_rows_per_s_on": round(on[0]),
        "fsync_stream_ratio_on_off": round(on[0] / off[0], 3),
        "commit_rows": args.commit_rows,
        "fsync_feedback_rows_per_s_off": round(off[1]), "fsync_feedback_rows_per_s_on": round(on[1]),
        "fsync_feedback_ms_per_commit_off": round(1000 * args.commit_rows / off[1], 2),
        "fsync_feedback_ms_per_commit_on": round(1000 * args.commit_rows / on[1], 2),
        "fsync_feedback_ratio_on_off": round(on[1] / off[1], 3),
    }


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
    parser.add_argument("--commits", type=int, default=500, help="feedback group commits, fsync on and off")
    parser.add_argument("--commit-rows", type=int, default=8, help="feedback rows per group commit")
    parser.add_argument("--dir", default=None, help="where the fsync store's segments go (default: the temp dir)")
    parser.add_argument("--fsync-only", action="store_true", help="only the fsync on / off figures")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    result = {"rows": args.rows, "add_rows": args.add_rows}
    try:
        if not args.fsync_only:
            ours_insert, ours_sample = bench_ours(args.rows, args.add_rows, args.sample_s, args.batch, args.sampler)
        result |= fsync_figures(args)
    finally:
        ray.shutdown()
    if not args.fsync_only:
        rllib_insert, rllib_sample = bench_rllib(args.rows, args.add_rows, args.sample_s, args.batch)
        result |= {
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
        print(f"{key:>34}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
