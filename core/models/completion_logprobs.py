"""The log-probability of each token of given completions under a causal LM: one teacher-forced pass.

    completion_logprobs(engine, [(prompt_ids, token_ids), ...], temperature=1.0, top_p=1.0)
        -> per completion, [T] float64: log p(token | prompt, the tokens before it)

What a policy would have given the tokens someone else sampled: the gate's off-policy estimate
asks it of a candidate (as it would serve them: the logged temperature and top-p), its KL bound
of a reference version (temperature 1, the model itself).  The distribution is the one
core/models/generator.py draws from: the logits divided by the temperature, cut to the smallest
set of tokens whose mass reaches top-p; temperature 0 is greedy (log 1 for the argmax, -inf for
any other token).  `engine` is a `TransformersEngine` (its model, pad id and device).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from core.models.generator import GREEDY


@torch.inference_mode()
def completion_logprobs(engine: Any, completions: Sequence[tuple[Sequence[int], Sequence[int]]],
                        temperature: float = 1.0, top_p: float = 1.0, batch: int = 16) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for start in range(0, len(completions), batch):
        out.extend(_batch(engine, completions[start:start + batch], temperature, top_p))
    return out


def _batch(engine: Any, chunk: Sequence[tuple[Sequence[int], Sequence[int]]], temperature: float,
           top_p: float) -> list[np.ndarray]:
    """Prompt and completion side by side, padded on the right (positions then count from 0 as they
    did when the tokens were drawn)."""
    rows = [list(p) + list(t) for p, t in chunk]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), engine.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    logits = engine.model(input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device)).logits.float()
    out = []
    for i, (prompt, tokens) in enumerate(chunk):
        if not tokens:
            out.append(np.zeros(0))
            continue
        steps = logits[i, len(prompt) - 1:len(prompt) - 1 + len(tokens)]  # the logits that predict each token
        taken = torch.tensor(list(tokens), dtype=torch.long, device=steps.device)
        out.append(_served(steps, taken, temperature, top_p).cpu().double().numpy())
    return out


def _served(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """[T] log q(token) under the sampling distribution of [T, V] logits."""
    if temperature == GREEDY:
        return torch.where(logits.argmax(-1) == tokens, 0.0, -math.inf)
    scores = logits / temperature
    if top_p < 1.0:  # the nucleus: tokens in order of probability while the mass before them is below top_p
        probs = torch.softmax(scores, -1)
        ordered, order = torch.sort(probs, dim=-1, descending=True)
        keep_sorted = torch.cumsum(ordered, -1) - ordered < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        scores = scores.masked_fill(~keep, -math.inf)
    return torch.log_softmax(scores, -1).gather(-1, tokens[:, None]).squeeze(-1)
