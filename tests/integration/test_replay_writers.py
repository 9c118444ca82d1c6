"""Writers and samplers against real Ray shard actors: blocked writers cannot starve a learner, and
the feedback joiner's group commit above a shard's batch limit lands split."""

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from actors.replay_client import ReplayClient
from actors.replay_shard import launch_shards
from core.config.replay import ReplaySection, TableSection
from core.replay.table import ReplayError, ReplayTimeout
from serving.join import Joiner
from tests.integration.helpers import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, namespace="replay-writers-test", log_to_driver=False)
    yield
    ray.shutdown()


def _shards(tmp_path, cfg):
    shards = launch_shards(cfg, str(tmp_path / "replay"), seed=0)
    client = ReplayClient(shards, cfg, seed=0)
    client.info()  # every shard up
    return client, shards


def _kill(shards):
    for s in shards:
        ray.kill(s, no_restart=True)

    def gone():
        for s in shards:
            try:
                ray.get(s.pid.remote(), timeout=1)
                return False
            except Exception:
                pass
        return True

    wait_until(gone, 30, "shards to stop")


def _views(shards) -> list[dict]:
    """Each shard's view of the table, asked with a deadline (a starved shard does not answer)."""
    return [ray.get(s.info.remote(), timeout=30)["paced"] for s in shards]


class Writer(threading.Thread):
    """A rollout-like writer: non-blocking adds (up to max_in_flight pending), a ReplayTimeout counted
    and the next add sent, as the rollout actor does."""

    def __init__(self, shards, cfg, name: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.client, self.name_, self.stop = ReplayClient(shards, cfg), name, stop
        self.started_adds = self.timeouts = 0

    def run(self):
        i = 0
        while not self.stop.is_set():
            self.started_adds += 1
            try:
                self.client.add("paced", cartpole_batch(50, i * 50, table="paced", actor=self.name_))
            except ReplayTimeout:
                self.timeouts += 1
            i += 1
        try:
            self.client.flush()
        except ReplayTimeout:
            self.timeouts += 1


def test_four_writers_blocked_on_the_rate_limiter_do_not_starve_a_learner(tmp_path):
    # a window of min_size + error_buffer (150 rows per shard): four writers with 8 adds in flight each
    # (32 per shard, more than a shard has threads) are held by the limiter until the learner samples;
    # the add timeout is long, so only the shard's own concurrency groups can let the samples through
    paced = TableSection(obs_dim=4, capacity=100_000, samples_per_insert=1.0, min_size=100, error_buffer=200)
    cfg = ReplaySection(num_shards=2, add_timeout_s=600, tables={"paced": paced})
    client, shards = _shards(tmp_path, cfg)
    stop = threading.Event()
    writers = [Writer(shards, cfg, f"w{k}", stop) for k in range(4)]
    for w in writers:
        w.start()
    try:
        # every shard holds its window's rows and each writer is in its 9th add: its first 8 are in
        # flight on the shards, held by the limiter
        def blocked():
            shards_full = all(v["size"] >= 150 for v in _views(shards))
            return shards_full and all(w.started_adds > cfg.max_in_flight for w in writers)

        wait_until(blocked, 60, "four blocked writers")
        held = client.info()["paced"]
        assert held["size"] <= 2 * (150 + 50)  # the limiter's window (one add may overshoot it), not 4 x 8 adds
        sampled, errors = [], []

        def learn():
            try:
                for _ in range(20):
                    sampled.append(client.sample("paced", 32, timeout_s=30).num_rows)
            except Exception as exc:  # said in the assertion below
                errors.append(exc)

        learner = threading.Thread(target=learn, daemon=True)
        started = time.monotonic()
        learner.start()
        learner.join(timeout=120)
        assert not learner.is_alive(), f"the learner's samples were not answered: {len(sampled)} of 20 in 120 s"
        assert not errors, errors
        assert sum(sampled) == 20 * 32
        # the samples released the writers: more rows went in once the learner took some
        wait_until(lambda: sum(v["inserts"] for v in _views(shards)) > held["inserts"], 60, "writers released")
        print(f"WRITERS blocked={held['size']} rows, 20 samples answered in {time.monotonic() - started:.2f}s, "
              f"timeouts={[w.timeouts for w in writers]}")
    finally:
        stop.set()

        def drain():  # the learner goes on until the writers' last adds are in
            while any(w.is_alive() for w in writers):
                try:
                    client.sample("paced", 32, timeout_s=1)
                except ReplayTimeout:
                    pass

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        drainer.join(timeout=120)
        _kill(shards)
    assert not any(w.is_alive() for w in writers)


def test_a_joiner_commit_above_the_shard_batch_limit_lands_split(tmp_path):
    feedback = TableSection(kind="feedback", capacity=1000, max_batch_rows=4)
    cfg = ReplaySection(num_shards=2, tables={"feedback": feedback})
    client, shards = _shards(tmp_path, cfg)
    events = [{"event_id": f"e{i}", "text": f"text {i}", "prediction": 1, "probs": [0.3, 0.7],
               "labels": ["neg", "pos"], "policy_id": "sentiment", "policy_version": 1, "actor_id": "serve-test"}
              for i in range(40)]

    async def run():
        joiner = Joiner(client, 60.0, text_table=None, commit_interval_s=0.2)
        await joiner.record(events)
        # every feedback taken before the commit loop wakes: one group of 40 rows, ten times the limit
        replies = await asyncio.gather(*(joiner.feedback(f"e{i}", "pos") for i in range(40)))
        return replies, joiner.stats()

    try:
        replies, stats = asyncio.run(run())
        assert [r["status"] for r in replies] == [200] * 40, [r for r in replies if r["status"] != 200][:3]
        assert stats["rows_written"] == {"feedback": 40} and stats["rows_refused"] == 0
        ids = client.export("feedback").column("id").to_pylist()
        assert sorted(ids) == sorted(f"feedback-e{i}" for i in range(40))  # all of them, each once
        unsplit = client.export("feedback").slice(0, 10).to_pydict()  # the same rows as one add: refused
        with pytest.raises(ReplayError, match="over the limit"):
            client.add_and_wait("feedback", unsplit)
    finally:
        _kill(shards)
