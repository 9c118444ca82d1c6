"""The feedback join without Ray: 404 / 410 / 422 / 409, idempotent repeats, bounded memory, the gate's evidence."""

import pytest

from core.data.schemas import feedback_schema, text_schema, to_record_batch
from serving.join import EventJoin, FeedbackRejected, to_columns

LABELS = ["neg", "pos"]


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _event(i: int, prediction: int = 1, version: int = 3) -> dict:
    probs = [0.2, 0.8] if prediction else [0.8, 0.2]
    return {"event_id": f"e{i}", "text": f"text {i}", "prediction": prediction, "probs": probs,
            "labels": LABELS, "policy_id": "sentiment", "policy_version": version, "actor_id": "serve-test"}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def join(clock):
    return EventJoin(60.0, clock=clock)


def _status(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(FeedbackRejected) as info:
        fn(*args, **kwargs)
    return info.value.status, info.value.detail


def test_record_returns_valid_text_rows(join):
    rows = join.record([_event(0), _event(1)])
    batch = to_record_batch("text", text_schema(), to_columns(rows))
    assert batch.num_rows == 2 and batch.column("text").to_pylist() == ["text 0", "text 1"]
    assert batch.column("policy_version").to_pylist() == [3, 3]
    assert join.record([_event(0)]) == []  # a retried record writes nothing twice


def test_no_text_rows_when_the_text_table_is_off(clock):
    join = EventJoin(60.0, text_table=None, clock=clock)
    assert join.record([_event(0)]) == []


def test_label_feedback_gives_a_valid_feedback_row(join):
    join.record([_event(0, prediction=1)])
    answer, row = join.join("e0", label="pos")
    assert answer == {"event_id": "e0", "accepted": True, "model_version": 3, "correct": True}
    batch = to_record_batch("feedback", feedback_schema(), to_columns([row]))
    assert batch.column("label").to_pylist() == [1] and batch.column("reward").to_pylist() == [None]
    assert batch.column("event_id").to_pylist() == ["e0"] and batch.column("prediction").to_pylist() == [1]
    assert batch.column("source").to_pylist() == ["feedback"]


def test_label_by_index_and_reward_only(join):
    join.record([_event(0, prediction=1), _event(1, prediction=1)])
    answer, row = join.join("e0", label=0)
    assert answer["correct"] is False and row["label"] == 0
    answer, row = join.join("e1", reward=0.25)
    assert answer["correct"] is None and row["reward"] == 0.25 and row["label"] is None


def test_repeat_is_idempotent_and_writes_nothing(join):
    join.record([_event(0)])
    first, row = join.join("e0", label="pos")
    again, row2 = join.join("e0", label="pos")
    by_index, row3 = join.join("e0", label=1)  # the same label, named by its index
    assert row is not None and row2 is None and row3 is None
    assert first == again == by_index
    assert join.stats.joined == 1 and join.stats.repeats == 2


def test_different_second_feedback_is_a_conflict(join):
    join.record([_event(0)])
    join.join("e0", label="pos")
    status, detail = _status(join.join, "e0", label="neg")
    assert status == 409 and "already has feedback" in detail


def test_unknown_event_is_404(join):
    status, detail = _status(join.join, "nope", label="pos")
    assert status == 404 and "unknown event_id" in detail


@pytest.mark.parametrize("label", ["maybe", 2, -1, True, 1.0])
def test_label_outside_the_set_is_422(join, label):
    join.record([_event(0)])
    status, detail = _status(join.join, "e0", label=label)
    assert status == 422 and "label set" in detail
    assert join.join("e0", label="pos")[1] is not None  # the rejected attempt did not consume the event


@pytest.mark.parametrize("reward", [-0.1, 1.5, float("nan"), float("inf"), True, "1"])
def test_reward_outside_unit_interval_is_422(join, reward):
    join.record([_event(0)])
    status, detail = _status(join.join, "e0", reward=reward)
    assert status == 422 and "[0, 1]" in detail


def test_feedback_needs_something(join):
    join.record([_event(0)])
    assert _status(join.join, "e0")[0] == 422


def test_late_feedback_is_410_with_the_reason_then_404_after_the_tombstone(join, clock):
    join.record([_event(0)])
    clock.t += 61
    status, detail = _status(join.join, "e0", label="pos")
    assert status == 410 and "arrived 61.0s after the prediction; feedback_ttl_s is 60" in detail
    clock.t += 61  # tombstone_s defaults to the ttl
    join.record([])  # eviction runs on every call
    assert _status(join.join, "e0", label="pos")[0] == 404
    assert not join.events and not join.tombs


def test_a_repeat_after_expiry_still_gets_its_answer(join, clock):
    join.record([_event(0)])
    answer, _ = join.join("e0", reward=1.0)
    clock.t += 61
    again, row = join.join("e0", reward=1.0)
    assert again == answer and row is None
    assert _status(join.join, "e0", reward=0.0)[0] == 409


def test_memory_is_bounded(clock):
    join = EventJoin(60.0, clock=clock, max_events=100, max_tombstones=50, max_open_per_client=1000)
    for i in range(1000):
        join.record([_event(i)])
    assert len(join.events) == 100 and len(join.tombs) == 50
    assert join.stats.evicted_for_capacity == 900
    status, detail = _status(join.join, "e899", label="pos")  # evicted, tombstone still there
    assert status == 410 and "at most 100" in detail
    assert join.join("e999", label="pos")[1] is not None
    clock.t += 200
    join.record([])
    assert not join.events and not join.tombs


def test_bad_event_ids_are_422(join):
    assert _status(join.join, "", label="pos")[0] == 422
    assert _status(join.join, "x" * 500, label="pos")[0] == 422
    assert _status(join.join, ["e0"], label="pos")[0] == 422


def test_rejections_are_counted(join):
    join.record([_event(0)])
    for _ in range(2):
        with pytest.raises(FeedbackRejected):
            join.join("zzz", label="pos")
    with pytest.raises(FeedbackRejected):
        join.join("e0", reward=3)
    assert join.stats.rejected == {404: 2, 422: 1}


class FlakyWriter:
    """Refuses the first `fail` writes (a restarting shard), then keeps what it gets."""

    def __init__(self, fail: int = 0):
        self.fail, self.rows = fail, {}

    def add_and_wait(self, table, columns, timeout_s=None):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("shard restarting")
        batch = to_record_batch(table, feedback_schema() if table == "feedback" else text_schema(), columns)
        for row in batch.to_pylist():
            self.rows.setdefault(table, {})[row["id"]] = row
        return {"accepted": batch.num_rows, "duplicates": 0}


def test_joiner_group_commits_and_retries_failed_writes():
    import asyncio

    from serving.join import Joiner

    async def run():
        writer = FlakyWriter(fail=1)
        joiner = Joiner(writer, 60.0, commit_interval_s=0.001)
        await joiner.record([_event(i) for i in range(3)])
        assert (await joiner.feedback("e0", "pos"))["status"] == 200
        assert (await joiner.feedback("e0", "pos"))["status"] == 200  # a repeat: nothing queued
        missing = await joiner.feedback("e9", "pos")
        assert missing["status"] == 404 and "unknown event_id" in missing["detail"]
        assert await joiner.flush(timeout_s=10)
        return writer, joiner.stats()

    writer, stats = asyncio.run(run())
    assert len(writer.rows["text"]) == 3 and list(writer.rows["feedback"]) == ["feedback-e0"]
    assert stats["write_errors"] == 1 and stats["rows_written"] == {"text": 3, "feedback": 1}
    assert stats["rejected"] == {404: 1} and stats["repeats"] == 1


def test_joiner_without_a_writer_drops_rows():
    import asyncio

    from serving.join import Joiner

    async def run():
        joiner = Joiner(None, 60.0)
        await joiner.record([_event(0)])
        await joiner.feedback("e0", reward=1.0)
        assert await joiner.flush(timeout_s=1)
        return joiner.stats()

    stats = asyncio.run(run())
    assert stats["rows_dropped"] == 2 and stats["rows_written"] == {}


class FakeGate:
    """The gate actor's shape for the joiner: evidence.remote(policy_id, items), recorded."""

    def __init__(self):
        from types import SimpleNamespace

        self.pushes: list[list[dict]] = []
        self.evidence = SimpleNamespace(remote=lambda pid, items: self.pushes.append(list(items)))

    def items(self, kind: str) -> list[dict]:
        return [item for push in self.pushes for item in push if item["type"] == kind]


def test_joiner_hands_the_gate_its_evidence_and_keeps_what_the_gate_holds_out_from_the_learner():
    import asyncio

    from core.data.hashing import stable_unit_hash
    from gate.kinds.text import TextKind
    from gate.slices import Slices
    from serving.join import Joiner

    n = 200

    async def run():
        writer, gate = FlakyWriter(), FakeGate()
        joiner = Joiner(writer, 60.0, commit_interval_s=0.001, gate_name="evolve-gate-sentiment",
                        policy_id="sentiment", push_every=10, slices=Slices(recent=0.25, salt="s3cret"))
        joiner._gate = gate  # what ray.get_actor(gate_name) returns in a run
        await joiner.record([_event(i, prediction=1) for i in range(n)])
        for i in range(n):
            if i % 4 == 3:
                assert (await joiner.feedback(f"e{i}", reward=1.0))["status"] == 200
            else:
                assert (await joiner.feedback(f"e{i}", "pos" if i % 2 else "neg"))["status"] == 200
        assert await joiner.flush(timeout_s=10)
        return writer, gate, joiner.stats()

    writer, gate, stats = asyncio.run(run())
    held = {f"e{i}" for i in range(n) if i % 4 != 3 and stable_unit_hash(f"s3crete{i}#recent") < 0.25}
    assert 20 < len(held) < 80 and stats["held_for_gate"] == len(held)
    trained = set(writer.rows["feedback"])
    assert trained == {f"feedback-e{i}" for i in range(n)} - {f"feedback-{e}" for e in held}  # never trained on
    feedback = gate.items("feedback")
    recent = [item["row"] for item in feedback if item["slice"] == "recent"]
    assert sorted(r["text"] for r in recent) == sorted(f"text {e[1:]}" for e in held)
    assert all(r["label"] == (1 if int(r["text"].split()[1]) % 2 else 0) for r in recent)
    kind = TextKind([("t", 0)])
    pairs = [(e.version, e.score) for e in map(kind.read, feedback)]
    assert len(pairs) == n and all(v == 3 for v, _ in pairs)  # every verdict, for the predicting version
    assert [x for _, x in pairs[:4]] == [0.0, 1.0, 0.0, 1.0]  # predicted pos: right only for label pos; reward 1
    assert len(gate.pushes) == n // 10 and all(item["client"] is None for item in feedback)
    answered = gate.items("answered")
    assert len(answered) == n and {a["prediction"] for a in answered} == {1}  # every answer: version, novelty, label


def test_a_flush_hands_the_gate_the_evidence_a_push_has_not_yet_carried():
    import asyncio

    from serving.join import Joiner

    async def run():
        gate = FakeGate()
        joiner = Joiner(FlakyWriter(), 60.0, commit_interval_s=0.001, gate_name="g", policy_id="p", push_every=10)
        joiner._gate = gate
        await joiner.record([_event(i) for i in range(3)])
        for i in range(3):
            assert (await joiner.feedback(f"e{i}", "pos", client="alice"))["status"] == 200
        before = len(gate.pushes)
        assert await joiner.flush(timeout_s=10)
        return before, gate

    before, gate = asyncio.run(run())
    assert before == 0 and len(gate.items("feedback")) == 3  # fewer than push_every: handed over at the flush
    assert {item["client"] for item in gate.items("feedback")} == {"alice"}


class GatedWriter(FlakyWriter):
    """Holds every write until the test opens the gate (a slow or restarting replay store)."""

    def __init__(self):
        super().__init__()
        import threading

        self.open = threading.Event()

    def add_and_wait(self, table, columns, timeout_s=None):
        self.open.wait(10)
        return super().add_and_wait(table, columns, timeout_s)


def test_feedback_is_acknowledged_only_once_its_row_is_written():
    import asyncio

    from serving.join import Joiner

    async def run():
        writer = GatedWriter()
        joiner = Joiner(writer, 60.0, commit_interval_s=0.001, durable_timeout_s=0.3, commit_timeout_s=30)
        await joiner.record([_event(i) for i in range(3)])
        pending = asyncio.ensure_future(joiner.feedback("e0", "pos"))
        await asyncio.sleep(0.1)
        assert not pending.done() and "feedback" not in writer.rows  # not answered while only in memory
        writer.open.set()
        assert (await pending)["status"] == 200 and "feedback-e0" in writer.rows["feedback"]
        writer.open.clear()
        slow = await joiner.feedback("e1", "neg")  # the store stays away past the timeout: not acknowledged
        assert slow["status"] == 503 and "not yet in the replay store" in slow["detail"]
        repeat = asyncio.ensure_future(joiner.feedback("e1", "neg"))  # a retry waits for the same row
        await asyncio.sleep(0.05)
        assert not repeat.done()
        writer.open.set()
        assert (await repeat)["status"] == 200 and "feedback-e1" in writer.rows["feedback"]

    asyncio.run(run())


def test_a_full_queue_answers_503_before_taking_the_feedback():
    import asyncio

    from serving.join import Joiner

    async def run():
        writer = GatedWriter()
        joiner = Joiner(writer, 60.0, text_table=None, commit_interval_s=0.001, max_pending=1, durable_timeout_s=5)
        await joiner.record([_event(i) for i in range(3)])
        first = asyncio.ensure_future(joiner.feedback("e0", "pos"))
        await asyncio.sleep(0)  # queued, not yet taken by the commit loop
        full = await joiner.feedback("e1", "pos")
        assert full["status"] == 503 and "queue full" in full["detail"] and joiner.stats()["refused_full"] == 1
        writer.open.set()
        assert (await first)["status"] == 200
        assert (await joiner.feedback("e1", "pos"))["status"] == 200  # not taken before: a fresh feedback now

    asyncio.run(run())
