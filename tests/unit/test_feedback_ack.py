"""An acknowledgement means stored: the join's take / settle / reopen, the joiner's group commits
against a writer that fails on cue (refused rows, an absent store, a batch limit), bounded text
rows, and open events capped per sender."""

import asyncio
import threading

import pytest

from core.data.schemas import SchemaError, feedback_schema, text_schema, to_record_batch
from serving.join import EventJoin, FeedbackRejected, Joiner

LABELS = ["neg", "pos"]


def _event(i: int, client: str | None = None) -> dict:
    return {"event_id": f"e{i}", "text": f"text {i}", "prediction": 1, "probs": [0.2, 0.8], "labels": LABELS,
            "policy_id": "sentiment", "policy_version": 3, "actor_id": "serve-test", "client": client}


async def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _status(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(FeedbackRejected) as info:
        fn(*args, **kwargs)
    return info.value.status, info.value.detail


class CueWriter:
    """A replay writer that fails on cue: `refuse` (ids it refuses as a schema error would),
    `away` (writes that raise as an absent shard does), `limit` (the shard's batch limit: a
    bigger write is refused, as ReplayTable.add refuses it), `hold` (writes to the `held`
    tables wait for it)."""

    def __init__(self, limit: int | None = None):
        self.rows: dict[str, dict[str, dict]] = {}
        self.writes: list[tuple[str, int]] = []  # (table, rows) of each write that landed
        self.refuse: set[str] = set()
        self.away = 0
        self.limit = limit
        self.hold = threading.Event()
        self.hold.set()
        self.held = {"feedback", "text"}

    def batch_limit(self, table: str) -> int:
        return self.limit

    def add_and_wait(self, table, columns, timeout_s=None):
        if table in self.held:
            self.hold.wait(30)
        if self.away:
            self.away -= 1
            raise ConnectionError("shard restarting")
        n = len(columns["id"])
        if self.limit is not None and n > self.limit:
            raise ValueError(f"batch of {n} rows is over the limit of {self.limit}")
        refused = self.refuse.intersection(columns["id"])
        if refused:
            raise SchemaError(table, "text", f"rows {sorted(refused)} cannot be stored")
        batch = to_record_batch(table, feedback_schema() if table == "feedback" else text_schema(), columns)
        for row in batch.to_pylist():
            self.rows.setdefault(table, {})[row["id"]] = row
        self.writes.append((table, n))
        return {"accepted": n, "duplicates": 0}


# ---- EventJoin: take, settle, reopen -------------------------------------------------------
def test_a_reopened_event_takes_the_retry_as_new_and_counts_it_once():
    join = EventJoin(60.0)
    join.record([_event(0)])
    answer, row = join.take("e0", "pos", client="alice")
    assert row is not None and row["text"] == "text 0"
    assert join.take("e0", "pos")[1] is None  # in flight: a repeat waits for the same row
    assert _status(join.take, "e0", "neg")[0] == 409
    assert join.stats.joined == 0  # not counted before it is stored
    join.reopen("e0")
    again, row = join.take("e0", "neg", client="alice")  # open again: any feedback, written anew
    assert row is not None and row["label"] == 0 and row["text"] == "text 0"
    taken = join.settle("e0")
    assert join.stats.joined == 1 and join.stats.reopened == 1
    assert (taken.version, taken.key, taken.client) == (3, (0, None), "alice")  # one verdict, the stored one
    assert join.settle("e0") is None
    assert join.take("e0", "neg")[1] is None  # stored: a repeat is a repeat
    assert _status(join.take, "e0", "pos")[0] == 409


def test_after_a_write_that_may_land_only_the_same_feedback_is_taken():
    join = EventJoin(60.0)
    join.record([_event(0)])
    join.take("e0", "pos")
    join.reopen("e0", maybe_stored=True)
    status, detail = _status(join.take, "e0", "neg")
    assert status == 409 and "may still take" in detail
    assert join.take("e0", "pos")[1] is not None


def test_a_flood_from_one_sender_evicts_its_own_oldest_events_only():
    join = EventJoin(60.0, max_events=1000, max_open_per_client=50)
    join.record([_event(0, client="alice")])
    join.record([_event(i, client="mallory") for i in range(1, 501)])
    assert join.stats.evicted_for_sender == 450 and join.stats.evicted_for_capacity == 0
    assert join.take("e0", "pos")[1] is not None  # alice's event is still open
    status, detail = _status(join.take, "e1", "pos")  # mallory's oldest is gone, and says why
    assert status == 410 and "its sender held more than 50" in detail
    assert join.take("e500", "pos")[1] is not None
    assert len(join.open["mallory"]) == 49 and "alice" not in join.open  # answered events are not open


def test_events_without_a_sender_of_their_own_take_the_record_calls():
    join = EventJoin(60.0, max_open_per_client=2)
    join.record([_event(i) for i in range(3)], client="bob")
    join.record([_event(3, client="carol")], client="bob")
    assert list(join.open["bob"]) == ["e1", "e2"] and list(join.open["carol"]) == ["e3"]


# ---- the Joiner's group commits --------------------------------------------------------------
def _joiner(writer, **kw) -> Joiner:
    return Joiner(writer, 60.0, commit_interval_s=0.001, **kw)


def test_a_refused_row_fails_its_waiter_alone_and_leaves_its_event_open():
    async def run():
        writer = CueWriter()
        writer.refuse = {"feedback-e1"}
        joiner = _joiner(writer, text_table=None)
        await joiner.record([_event(i) for i in range(4)])
        replies = await asyncio.gather(*(joiner.feedback(f"e{i}", "pos") for i in range(4)))
        assert [r["status"] for r in replies] == [200, 500, 200, 200]  # one commit, halved around e1
        assert "refused its row" in replies[1]["detail"] and "the event is open" in replies[1]["detail"]
        writer.refuse = set()  # the fix ships: the client's retry is written, not answered as a repeat
        assert (await joiner.feedback("e1", "pos"))["status"] == 200
        assert await joiner.flush(10)
        return writer, joiner.stats()

    writer, stats = asyncio.run(run())
    assert sorted(writer.rows["feedback"]) == [f"feedback-e{i}" for i in range(4)]
    assert stats["rows_refused"] == 1 and stats["reopened"] == 1 and stats["joined"] == 4


def test_an_absent_store_is_given_up_on_so_later_feedback_is_not_held_behind_it():
    async def run():
        writer = CueWriter()
        writer.away = 10**6  # the shard stays away
        joiner = _joiner(writer, text_table=None, durable_timeout_s=5, commit_timeout_s=0.5)
        await joiner.record([_event(i) for i in range(3)])
        first = await joiner.feedback("e0", "pos")
        assert first["status"] == 503 and "did not take its row" in first["detail"]
        assert "commit timeout 0.5s" in first["detail"]
        assert "ConnectionError: shard restarting" in first["detail"]
        writer.away = 0  # back
        assert (await joiner.feedback("e1", "pos"))["status"] == 200  # not stuck behind e0's commit
        assert _status_of(await joiner.feedback("e0", "neg")) == 409  # e0's row may still land
        assert (await joiner.feedback("e0", "pos"))["status"] == 200  # the retry: written, once
        return writer, joiner.stats()

    writer, stats = asyncio.run(run())
    assert sorted(writer.rows["feedback"]) == ["feedback-e0", "feedback-e1"]
    assert stats["commits_given_up"] == 1 and stats["write_errors"] >= 2 and stats["joined"] == 2


def _status_of(reply: dict) -> int:
    return reply["status"]


def test_a_repeat_in_flight_shares_the_first_writes_fate():
    async def run():
        writer = CueWriter()
        writer.hold.clear()
        writer.refuse = {"feedback-e0"}
        joiner = _joiner(writer, text_table=None, durable_timeout_s=5)
        await joiner.record([_event(0)])
        first = asyncio.ensure_future(joiner.feedback("e0", "pos"))
        await _until(lambda: joiner.commits["feedback"].writing)
        repeat = asyncio.ensure_future(joiner.feedback("e0", "pos"))
        await asyncio.sleep(0.05)
        assert not first.done() and not repeat.done() and joiner.stats()["repeats"] == 1
        writer.hold.set()
        assert [(await first)["status"], (await repeat)["status"]] == [500, 500]
        writer.refuse = set()
        assert (await joiner.feedback("e0", "pos"))["status"] == 200
        return writer

    assert list(asyncio.run(run()).rows["feedback"]) == ["feedback-e0"]


def test_a_commit_above_the_batch_limit_lands_split():
    async def run():
        writer = CueWriter(limit=3)
        writer.hold.clear()  # a group of 10 builds up behind the first write
        joiner = _joiner(writer, text_table=None)
        await joiner.record([_event(i) for i in range(11)])
        first = asyncio.ensure_future(joiner.feedback("e0", "pos"))
        await _until(lambda: joiner.commits["feedback"].writing)
        rest = [asyncio.ensure_future(joiner.feedback(f"e{i}", "pos")) for i in range(1, 11)]
        await _until(lambda: len(joiner.commits["feedback"].queue) == 10)
        writer.hold.set()
        replies = [await first] + [await r for r in rest]
        return writer, replies, joiner.stats()

    writer, replies, stats = asyncio.run(run())
    assert [r["status"] for r in replies] == [200] * 11
    assert [n for _, n in writer.writes] == [1, 3, 3, 3, 1]  # the group of 10, cut at the limit
    assert len(writer.rows["feedback"]) == 11 and stats["rows_refused"] == 0


def test_text_rows_are_bounded_and_the_drops_counted():
    async def run():
        writer = CueWriter()
        writer.hold.clear()
        joiner = _joiner(writer, max_text_pending=5)
        await joiner.record([_event(0)])
        await _until(lambda: joiner.commits["text"].writing)  # the first text row is being written (held)
        await joiner.record([_event(i) for i in range(1, 21)])
        stats = joiner.stats()
        writer.hold.set()
        assert await joiner.flush(10)
        return writer, stats, joiner.stats()

    writer, held, done = asyncio.run(run())
    assert held["text_rows_dropped"] == 15 and held["rows_pending"] == 5
    assert len(writer.rows["text"]) == 6 and done["rows_written"] == {"text": 6}


def test_text_rows_never_hold_feedback_back():
    async def run():
        writer = CueWriter()
        writer.hold.clear()
        writer.held = {"text"}  # the text table's writes hang
        joiner = _joiner(writer, durable_timeout_s=5, commit_timeout_s=30)
        await joiner.record([_event(0)])
        await _until(lambda: joiner.commits["text"].writing)
        reply = await joiner.feedback("e0", "pos")
        writer.hold.set()
        return reply, writer

    reply, writer = asyncio.run(run())
    assert reply["status"] == 200 and list(writer.rows["feedback"]) == ["feedback-e0"]


def test_the_joiner_knows_each_senders_open_events():
    async def run():
        joiner = _joiner(CueWriter(), max_open_per_client=2)
        await joiner.record([_event(i) for i in range(3)], client="alice")
        await joiner.record([_event(3)], client="bob")
        assert (joiner.open_events("alice"), joiner.open_events("bob")) == (2, 1)
        assert (await joiner.feedback("e2", "pos"))["status"] == 200
        gone = await joiner.feedback("e0", "pos")
        return joiner.open_events("alice"), gone, joiner.stats()

    alice, gone, stats = asyncio.run(run())
    assert alice == 1 and gone["status"] == 410 and stats["evicted_for_sender"] == 1
