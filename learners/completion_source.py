"""Rows of a `completions` replay table as padded tensors for the policy-gradient learner.

    CompletionSource(sampler, table, rows, rule, pad_id, context).batches(ctx, seed)
        -> CompletionBatch (or None while users are quiet)

The sampling is `learners.feedback_source.FeedbackSource`'s (a background thread, None when idle,
fifo or uniform tables alike) with the rows kept as they are (`CompletionRows`); each batch's rows
pass the reward rule (core/data/completion_rewards.py) and are padded here, so the learner gets

    input_ids        long [B, L]     the prompt's tokens then the completion's, padded on the right
    attention_mask   long [B, L]
    target_mask      float [B, L-1]  1 where position t+1 is a completion token (the next-token
                                     targets of the positions the learner scores)
    old_logprobs     float [B, L-1]  the sampling version's log-probability of that token, under
                                     the model at temperature 1 (the completions table's `logprobs`)
    reward           float [B]
    group            long [B]        completions with the same code are compared with each other
    relative         bool [B]        a preference's reward (kept out of the running baseline)
    policy_version   long [B]        the version that sampled each completion

A completion longer than the model's context with its prompt is dropped (its prompt would have to
lose tokens, and the logged log-probabilities were taken on the whole prompt) with its row (a
preference's pair goes together), as is a row whose feedback gives no finite reward; `dropped`
counts both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from core.data.completion_rewards import RewardRule, ScoredCompletion
from learners.feedback_source import FeedbackSampler, FeedbackSource
from learners.objective import WorkerContext


@dataclass
class CompletionRows:
    """Rows of the completions table as plain Python dicts (what the reward rule reads)."""

    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: Sequence[int] | np.ndarray) -> "CompletionRows":
        return CompletionRows([self.rows[int(i)] for i in idx])


def completion_rows(rb: pa.RecordBatch) -> CompletionRows:
    return CompletionRows(rb.to_pylist())


@dataclass
class CompletionBatch:
    tensors: dict[str, torch.Tensor]
    dropped: int = 0  # feedback rows without a finite reward, or with a completion past the context
    rows: int = 0  # feedback rows the batch came from
    groups: list[str] = field(default_factory=list)  # the group names behind `group`'s codes
    keys: list[str] = field(default_factory=list)  # each completion's event id, in row order

    def __len__(self) -> int:
        return int(self.tensors["reward"].shape[0])


def completion_batch(rows: CompletionRows, rule: RewardRule, pad_id: int, context: int) -> CompletionBatch:
    """Score every row by the rule, drop the rows that cannot be learned from, pad the rest.  A row is
    kept whole or dropped whole: a preference's two completions are only ever learned together."""
    per_row = (rule.scored(row) for row in rows.rows)
    kept = [scored for scored in per_row if scored and all(_fits(s, context) for s in scored)]
    batch = pad_completions([s for scored in kept for s in scored], pad_id)
    batch.dropped, batch.rows = len(rows) - len(kept), len(rows)
    return batch


def _fits(s: ScoredCompletion, context: int) -> bool:
    return (len(s.prompt_ids) >= 1 and len(s.token_ids) >= 1 and len(s.logprobs) == len(s.token_ids)
            and len(s.prompt_ids) + len(s.token_ids) <= context)


def pad_completions(scored: Sequence[ScoredCompletion], pad_id: int) -> CompletionBatch:
    """Right-padded tensors of prompt + completion, with the completion's targets and logged log-probabilities."""
    n = len(scored)
    width = max((len(s.prompt_ids) + len(s.token_ids) for s in scored), default=2)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    targets = torch.zeros((n, width - 1))
    old = torch.zeros((n, width - 1))
    for i, s in enumerate(scored):
        p, c = len(s.prompt_ids), len(s.token_ids)
        ids[i, : p + c] = torch.tensor(list(s.prompt_ids) + list(s.token_ids), dtype=torch.long)
        attention[i, : p + c] = 1
        # position t predicts token t+1: the completion's tokens are the targets of positions p-1 .. p+c-2
        targets[i, p - 1 : p + c - 1] = 1.0
        old[i, p - 1 : p + c - 1] = torch.tensor(list(s.logprobs), dtype=torch.float32)
    names = sorted({s.group for s in scored})
    code = {g: k for k, g in enumerate(names)}
    return CompletionBatch({
        "input_ids": ids, "attention_mask": attention, "target_mask": targets, "old_logprobs": old,
        "reward": torch.tensor([s.reward for s in scored], dtype=torch.float32),
        "group": torch.tensor([code[s.group] for s in scored], dtype=torch.long),
        "relative": torch.tensor([s.relative for s in scored], dtype=torch.bool),
        "policy_version": torch.tensor([s.policy_version for s in scored], dtype=torch.long),
    }, groups=names, keys=[s.key for s in scored])


@dataclass
class CompletionSource:
    """`rows` feedback rows per batch from a completions table, scored and padded."""

    sampler: FeedbackSampler
    table: str
    rows: int
    rule: RewardRule
    pad_id: int
    context: int  # the model's longest prompt + completion in tokens
    prefetch: int = 2
    sample_timeout_s: float = 2.0
    idle_after_s: float = 1.0  # no rows for this long: yield None (the train loop keeps turning)

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[CompletionBatch | None]:
        source = FeedbackSource(self.sampler, self.table, self.rows, prefetch=self.prefetch,
                                sample_timeout_s=self.sample_timeout_s, idle_after_s=self.idle_after_s,
                                convert=completion_rows)
        for rows in source.batches(ctx, seed):
            yield None if rows is None else completion_batch(rows, self.rule, self.pad_id, self.context)
