"""Completions from the feedback join, through a replay table, to the learner's padded tensors."""

import math

import pytest
import torch

from core.config.replay import ReplaySection, TableSection
from core.data.completion_rewards import RewardRule
from core.models.generator import Completion
from core.replay.store import ShardStore
from learners.completion_source import CompletionRows, CompletionSource, completion_batch
from learners.objective import WorkerContext
from serving.completion_join import completion_event
from serving.event_join import EventJoin, to_columns

PAD = 0


def _completion(prompt_ids, tokens, logprobs) -> Completion:
    return Completion(prompt_ids=prompt_ids, token_ids=tokens, text=" ".join(map(str, tokens)), logprobs=logprobs,
                      sampling_logprobs=[lp - 0.1 for lp in logprobs], finish="length")


def _joined_rows():
    """Four feedback rows as the join writes them: thumbs up, a reward, a preference, a thumbs down."""
    join = EventJoin(60.0, feedback_table="completions", text_table=None)
    g1 = [([2, 7], [10, 11, 12], [-1.0, -2.0, -3.0]), ([2, 7], [13], [-0.5]), ([2, 7], [14, 15], [-1.5, -2.5])]
    g2 = [([2, 8, 9, 5], [16, 17], [-0.25, -0.75])]
    events = [completion_event(f"g1-{i}", "g1", "p1", _completion(*c), 1.0, 1.0, "writer", 3, "r0", None)
              for i, c in enumerate(g1)]
    events += [completion_event("g2-0", "g2", "p2", _completion(*g2[0]), 1.0, 1.0, "writer", 4, "r0", None)]
    join.record(events)
    rows = [join.join("g1-0", label=1)[1], join.join("g1-1", reward=0.9)[1],
            join.join("g1-2", better_than="g1-0")[1], join.join("g2-0", label=0)[1]]
    return rows


@pytest.fixture
def store(tmp_path):
    cfg = ReplaySection(num_shards=1, tables={"completions": TableSection(kind="completions", sampler="fifo")})
    s = ShardStore(cfg, tmp_path)
    s.add("completions", to_columns(_joined_rows()))
    yield s
    s.close()


def test_joined_rows_become_padded_tensors_by_the_rule(store):
    source = CompletionSource(store, "completions", rows=4, rule=RewardRule(reward_max=0.8, preference=0.5),
                              pad_id=PAD, context=64, idle_after_s=5.0)
    batch = next(source.batches(WorkerContext(), seed=0))
    t = batch.tensors
    assert batch.rows == 4 and batch.dropped == 0 and len(batch) == 5  # the preference is two completions
    tokens = [tuple(int(x) for x in t["input_ids"][i][t["attention_mask"][i] > 0]) for i in range(5)]
    relative = t["relative"].tolist()

    def find(seq, rel):
        return next(i for i in range(5) if tokens[i] == seq and relative[i] == rel)

    # g1-0 twice: its thumbs-up, and as the completion its preference rejected
    up, rejected = find((2, 7, 10, 11, 12), False), find((2, 7, 10, 11, 12), True)
    scalar, chosen, down = find((2, 7, 13), False), find((2, 7, 14, 15), True), find((2, 8, 9, 5, 16, 17), False)
    assert t["reward"][[up, scalar, chosen, rejected, down]].tolist() == pytest.approx([1.0, 0.8, 0.5, -0.5, 0.0])
    assert t["group"][up] == t["group"][scalar] != t["group"][chosen] == t["group"][rejected] != t["group"][down]
    assert t["policy_version"][down] == 4 and t["policy_version"][rejected] == 3
    # the targets: each completion token, at the position before it, with its logged log-probability
    assert t["target_mask"][up].tolist()[:5] == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert t["old_logprobs"][up][1:4].tolist() == [-1.0, -2.0, -3.0]
    assert t["target_mask"][down].tolist()[:5] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert t["old_logprobs"][down][3:5].tolist() == [-0.25, -0.75]
    assert t["target_mask"].sum() == 3 + 1 + 2 + 3 + 2
    assert t["input_ids"].shape == (5, 6) and bool((t["input_ids"][t["attention_mask"] == 0] == PAD).all())


def test_what_cannot_be_learned_from_is_dropped_and_counted():
    rows = _joined_rows()
    rows[1] = {**rows[1], "reward": math.nan}
    batch = completion_batch(CompletionRows(rows), RewardRule(), PAD, context=5)  # g2-0 is 6 tokens long
    assert batch.dropped == 2 and batch.rows == 4 and len(batch) == 3  # the thumbs-up and the preference's pair
    assert batch.tensors["input_ids"].shape[1] == 5
    # a preference is learned whole or not at all: its rejected completion (5 tokens) past the context
    pair = completion_batch(CompletionRows([rows[2]]), RewardRule(), PAD, context=4)
    assert pair.dropped == 1 and len(pair) == 0


def test_a_quiet_table_yields_none():
    class Empty:
        def sample(self, table, n, timeout_s=None):
            raise TimeoutError("no rows yet")

    source = CompletionSource(Empty(), "completions", rows=4, rule=RewardRule(), pad_id=PAD, context=64,
                              sample_timeout_s=0.01, idle_after_s=0.05)
    assert next(source.batches(WorkerContext(), seed=0)) is None
    empty = completion_batch(CompletionRows([]), RewardRule(), PAD, 64)
    assert len(empty) == 0 and isinstance(empty.tensors["input_ids"], torch.Tensor)
