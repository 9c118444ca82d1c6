"""What generate_vs_trl.py measures the same way on both sides: held-out judged reward, KL to the
starting model, and reward curves read at equal completions.

    scores = judged(model, tokenizer, reference_engine, prompts, judge, n=2, max_new_tokens=24, seed=0)
        -> {reward, kl, repetition, length, completions, tokens}
    value_at(curve, x)             the curve's value at completions x (the last point at or before x)
    window_mean(curve, lo, hi)     the completion-weighted mean of the points with lo < completions <= hi

A model's held-out score: `n` completions of every held-out prompt drawn by the model itself
(temperature 1, top-p 1, the same seeds for every model), their mean reward by the judge, and the
mean per-token KL of the model to the reference on those same samples (core/stats/reward_hacking.py:
log p_model - log p_reference summed over the sampled tokens, over the tokens), the estimate the
gate's bounds stage makes.  A curve is a list of (completions, value) points, completions rising.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from core.models.completion_logprobs import completion_logprobs
from core.models.generator import Sampling, TransformersEngine
from core.stats.reward_hacking import behaviour

Curve = Sequence[tuple[float, float]]


def judged(model: Any, tokenizer: Any, reference: TransformersEngine, prompts: Sequence[str], judge: Any,
           n: int = 2, max_new_tokens: int = 24, seed: int = 0, per_call: int = 32) -> dict[str, float]:
    """The model's mean judged reward on `prompts` and its behaviour (KL to `reference`, repetition, length)."""
    engine = TransformersEngine(model, tokenizer)
    drawn = []
    step = max(1, per_call // n)
    for i, start in enumerate(range(0, len(prompts), step)):
        sampling = Sampling(n=n, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=seed + i)
        drawn.extend(engine.generate(list(prompts[start:start + step]), sampling))
    flat = [(p, c) for p, cs in zip(prompts, drawn) for c in cs]
    rewards = judge.reward([p for p, _ in flat], [c.text for _, c in flat])
    ref = completion_logprobs(reference, [(c.prompt_ids, c.token_ids) for _, c in flat])
    b = behaviour([c.token_ids for _, c in flat], [c.logprobs for _, c in flat], ref)
    return {"reward": float(np.mean(rewards)), "kl": float(b.kl), "repetition": b.repetition,
            "length": b.length, "completions": b.completions, "tokens": b.tokens}


def value_at(curve: Curve, x: float) -> float | None:
    """The value of the last point whose completions are at most `x`; None before the first point."""
    found = None
    for at, value in curve:
        if at > x:
            break
        if value is not None:
            found = value
    return found


def window_mean(curve: Curve, lo: float, hi: float) -> float | None:
    """Mean of the values of the points in (lo, hi], each weighted by the completions since the point
    before it (a batch's mean reward counts as many times as the batch had completions)."""
    total = weight = 0.0
    previous = 0.0
    for at, value in curve:
        width = at - previous
        previous = at
        if lo < at <= hi and value is not None and width > 0:
            total += width * value
            weight += width
    return total / weight if weight else None
