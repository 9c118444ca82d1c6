"""What a replay writer can count on without a cluster: fsync by table kind, the default add timeout
on the rate limiter, the client's batch limit, and a rollout loop that outlives a timed-out add."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.config.replay import ReplaySection, TableSection
from core.replay.store import ShardStore
from core.replay.table import ReplayTimeout

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402


def _tables(**feedback) -> dict[str, TableSection]:
    return {"transitions": TableSection(obs_dim=4), "text": TableSection(kind="text"),
            "feedback": TableSection(kind="feedback", **feedback)}


@pytest.mark.parametrize(
    "replay_fsync, feedback_fsync, expected",
    [
        (False, None, {"transitions": False, "text": False, "feedback": True}),  # the default
        (True, None, {"transitions": True, "text": True, "feedback": True}),
        (False, False, {"transitions": False, "text": False, "feedback": False}),  # said outright
    ],
)
def test_feedback_tables_fsync_unless_told_not_to(tmp_path, replay_fsync, feedback_fsync, expected):
    cfg = ReplaySection(num_shards=1, fsync=replay_fsync, tables=_tables(fsync=feedback_fsync))
    store = ShardStore(cfg, tmp_path)
    assert {name: t.log.fsync for name, t in store.tables.items()} == expected
    store.close()


def test_an_add_held_by_the_rate_limiter_times_out_by_default(tmp_path):
    paced = TableSection(obs_dim=4, samples_per_insert=1.0, min_size=10, error_buffer=20)
    store = ShardStore(ReplaySection(num_shards=1, add_timeout_s=0.2, tables={"transitions": paced}), tmp_path)
    store.add("transitions", cartpole_batch(40, 0))  # past the window (min_size + error_buffer)
    with pytest.raises(ReplayTimeout, match="timed out after 0.2s waiting to insert"):
        store.add("transitions", cartpole_batch(10, 40))  # samplers are behind; no timeout given
    assert store.table("transitions").size == 40  # nothing of the refused add was written
    store.close()


def test_an_unpaced_add_is_not_held_but_counts_toward_the_pace(tmp_path):
    paced = TableSection(obs_dim=4, samples_per_insert=1.0, min_size=10, error_buffer=20)
    store = ShardStore(ReplaySection(num_shards=1, add_timeout_s=0.2, tables={"transitions": paced}), tmp_path)
    store.add("transitions", cartpole_batch(40, 0))
    assert store.add("transitions", cartpole_batch(10, 40), paced=False)["accepted"] == 10  # a client's steps
    with pytest.raises(ReplayTimeout):
        store.add("transitions", cartpole_batch(10, 50))  # a rollout actor's: held, the client's rows counted
    assert store.table("transitions").size == 50
    store.close()


def test_the_clients_batch_limit_is_the_shards():
    from actors.replay_client import ReplayClient

    tables = {"feedback": TableSection(kind="feedback", capacity=1000, max_batch_rows=800),
              "text": TableSection(kind="text", max_batch_rows=64)}
    client = ReplayClient([None, None], ReplaySection(num_shards=2, tables=tables))
    assert client.batch_limit("feedback") == 500  # capacity per shard is below max_batch_rows
    assert client.batch_limit("text") == 64


class _Stop(threading.Event):
    """The loop's stop event: pauses are recorded, not slept."""

    def __init__(self):
        super().__init__()
        self.pauses: list[float] = []

    def wait(self, timeout=None):
        self.pauses.append(timeout)
        return self.is_set()


def test_a_rollout_loop_sends_a_timed_out_add_again_and_goes_on():
    from actors.rollout import RolloutActor, WriteSize

    class Worker:
        env_steps, recent_returns, policy, actor_id = 0, [], SimpleNamespace(version=1), "a"

        def __init__(self, stop):
            self.stop, self.runs, self.flushes, self.resent = stop, 0, 0, 0
            self.writer = SimpleNamespace(flush=self.flush)

        def run(self, n):
            self.runs += 1
            self.env_steps += n

        def resend(self):
            self.resent += 1

        def flush(self):
            self.flushes += 1
            if self.flushes <= 2:  # the learner is behind: the first batch is held twice
                raise ReplayTimeout("table 'transitions': timed out after 30s waiting to insert")
            if self.runs == 3:
                self.stop.set()

    crashes: list[BaseException] = []
    shell = object.__new__(RolloutActor.__ray_metadata__.modified_class)
    stop = _Stop()
    metric = SimpleNamespace(inc=lambda *a, **k: None, set=lambda *a, **k: None)
    shell.worker, shell._write_size, shell._error = Worker(stop), WriteSize(1, 1), None
    shell._stop, shell._on_crash, shell._write_timeouts = stop, crashes.append, 0
    shell._steps = shell._return = shell._version = metric
    shell._tags = {}
    shell._loop()
    assert crashes == [] and shell._error is None
    assert shell._write_timeouts == 2 and stop.pauses == [2, 4]
    assert shell.worker.resent == 2 and shell.worker.runs == 3  # the held batch sent again, not dropped


def test_a_resent_batch_is_the_same_rows():
    from tests.unit.test_rl_rollout import _worker

    worker = _worker()
    worker.run(4)
    worker.resend()  # its add timed out: the same ids go again, so the shard stores them once
    (_, sent), (_, again) = worker.writer.adds
    assert sent.num_rows > 0 and again.equals(sent)
