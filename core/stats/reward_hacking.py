"""What a generator's completions say about reward hacking, whatever reward they earn.

    kl          mean per-token KL(candidate || reference), estimated from the candidate's own
                samples: over every sampled token, log p_candidate(token) - log p_reference(token),
                summed and divided by the tokens.  Unbiased when the samples are drawn from the
                candidate itself (temperature 1, top-p 1); a policy that drifts far from where it
                started to please the reward shows here first
    repetition  the share of a completion's n-grams (of token ids) that already occurred earlier in
                the same completion, over all completions: a phrase repeated to please a judge
    length      the mean number of tokens of a completion (with its end token): a reward that
                likes long or short answers is bought with length

Plain numpy: the gate's `bounds` stage (gate/stages/bounds.py) asks it, a benchmark may too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Behaviour:
    kl: float | None  # None: no reference log-probabilities were given
    repetition: float
    length: float
    completions: int
    tokens: int

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def repetition_rate(completions: Sequence[Sequence[int]], n: int = 3) -> float:
    """Repeated n-grams / all n-grams, over completions (0.0 when none is n tokens long)."""
    repeated = total = 0
    for tokens in completions:
        seen: set[tuple[int, ...]] = set()
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i:i + n])
            repeated += gram in seen
            seen.add(gram)
            total += 1
    return repeated / total if total else 0.0


def mean_kl(logprobs: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> float:
    """Mean per-token log p - log q over every token of every completion (0.0 with no tokens)."""
    if len(logprobs) != len(reference) or any(len(a) != len(b) for a, b in zip(logprobs, reference)):
        raise ValueError("the reference needs one log-probability per token of every completion")
    tokens = sum(len(a) for a in logprobs)
    if tokens == 0:
        return 0.0
    total = sum(float(np.sum(np.asarray(a, np.float64) - np.asarray(b, np.float64))) for a, b in zip(logprobs, reference))
    return total / tokens


def behaviour(token_ids: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]],
              reference: Sequence[Sequence[float]] | None, n: int = 3) -> Behaviour:
    if not token_ids:
        raise ValueError("behaviour needs at least one completion")
    lengths = [len(t) for t in token_ids]
    return Behaviour(kl=None if reference is None else mean_kl(logprobs, reference),
                     repetition=repetition_rate(token_ids, n), length=float(np.mean(lengths)),
                     completions=len(token_ids), tokens=int(sum(lengths)))
