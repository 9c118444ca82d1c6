"""The wide part of the feedback classifier: hashed character n-grams and a linear layer.

    text -> character n-grams (ngram_min..ngram_max) -> hash -> bucket in [0, buckets)
         -> counts, L2-normalised -> sum of the buckets' weight rows + bias -> logits [B, L]

The hashing trick (Weinberger et al. 2009; Vowpal Wabbit) fixes the model's
size whatever the vocabulary: memory stays bounded on an endless stream, and
an unseen n-gram needs no vocabulary update.  The hash works on Unicode code
points with fixed 64-bit constants, so every process (learner, replica, gate)
maps a text to the same buckets.

`kind` says how the served classifier uses it:
  wide       the linear model alone (the encoder is carried, unused, so novelty scoring still has it)
  wide_deep  combined with the deep encoder's logits (`combine`):
               gate  a_deep * deep + a_wide * wide + c, each part trained on its own loss and the
                     three mixing figures on the combined loss of the parts' detached logits
                     (stacking); it starts at (0, 1, 0), the wide model alone (the default)
               sum   deep + wide, trained jointly on one loss (Wide & Deep, Cheng et al. 2016)

A pair `(a, b)` (core/data/inputs.py) is hashed as three sides: the n-grams of a,
those of b, and those of b that also occur in a, each side salted into its own
buckets.  A sum of per-side weights cannot see how the two texts relate; the
shared n-grams are that relation's cross feature (Wide & Deep's cross-product
transformation), e.g. the names and topic words two paragraphs of one article share.
`overlap_bins` > 0 adds how much they share: for each n-gram length, the share of b's
distinct n-grams found in a and of a's found in b, each binned into one of `overlap_bins`
buckets (a one-hot, so the linear model learns any shape of that curve).  `pair_norm`
says how a pair's counts are normalised: `joint` (one L2 norm over every side) or `side`
(each side to unit norm on its own, as stacked per-side TF-IDF blocks are, so a long
paragraph does not drown the shared side).  A single text is one side: both read it alike.

A classifier version stores the weights under `wide.*` and `wide.json`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from core.data.inputs import TextInput

WIDE_FILE = "wide.json"
_MULT = np.uint64(0x100000001B3)  # FNV-1a prime: folds the next code point into an n-gram's value
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser
_ORDER = np.uint64(0x9E3779B97F4A7C15)  # keeps a bigram apart from a unigram of the same value
# per side of a pair: 0 leaves a single text's buckets as they always were
SIDE_SALTS = (np.uint64(0), np.uint64(0xD6E8FEB86659FD93), np.uint64(0xA0761D6478BD642F),
              np.uint64(0xE7037ED1A0B428DB))  # the last: a pair's overlap bins
PAIR_NORMS = ("joint", "side")


def finalise(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (uint64 in, uint64 out)."""
    h = (h ^ (h >> np.uint64(30))) * _MIX1
    h = (h ^ (h >> np.uint64(27))) * _MIX2
    return h ^ (h >> np.uint64(31))


def hash_ngrams(text: str, buckets: int, ngram_min: int = 1, ngram_max: int = 2, side: int = 0) -> np.ndarray:
    """int64 [n]: the bucket of every character n-gram of `text`, with repeats (`side`: of a pair)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    out = []
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        value = np.zeros(len(cps), np.uint64)
        for n in range(1, ngram_max + 1):
            if len(cps) < n:
                break
            value = value[:len(cps) - n + 1] * _MULT ^ cps[n - 1:]  # value[i] covers cps[i : i + n]
            if n >= ngram_min:
                h = finalise(value ^ (np.uint64(n) * _ORDER) ^ SIDE_SALTS[side])
                out.append((h % np.uint64(buckets)).astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


class HashedNgrams:
    """Texts -> the EmbeddingBag inputs (bucket ids, bag offsets, per-id values)."""

    def __init__(self, buckets: int, ngram_min: int = 1, ngram_max: int = 2, pair_norm: str = "joint",
                 overlap_bins: int = 0):
        if buckets < 2 or not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need buckets >= 2 and 1 <= ngram_min <= ngram_max, got {buckets}, {ngram_min}, {ngram_max}")
        if pair_norm not in PAIR_NORMS or overlap_bins < 0:
            raise ValueError(f"pair_norm joint | side and overlap_bins >= 0, got {pair_norm!r}, {overlap_bins}")
        self.buckets, self.ngram_min, self.ngram_max = buckets, ngram_min, ngram_max
        self.pair_norm, self.overlap_bins = pair_norm, overlap_bins

    def buckets_of(self, item: TextInput) -> np.ndarray:
        """int64 [n]: the buckets of a text, or of a pair's sides (module docstring), with repeats."""
        return np.concatenate(self.sides_of(item))

    def sides_of(self, item: TextInput) -> list[np.ndarray]:
        """The buckets of each side, with repeats: one side for a text; a, b, shared (and overlap) for a pair."""
        lo, hi, size = self.ngram_min, self.ngram_max, self.buckets
        if isinstance(item, str):
            return [hash_ngrams(item, size, lo, hi)]
        a, b = item
        in_a, shared = hash_ngrams(a, size, lo, hi, side=2), hash_ngrams(b, size, lo, hi, side=2)
        sides = [hash_ngrams(a, size, lo, hi, side=0), hash_ngrams(b, size, lo, hi, side=1),
                 shared[np.isin(shared, in_a)]]
        return sides + ([self._overlap(a, b)] if self.overlap_bins else [])

    def _overlap(self, a: str, b: str) -> np.ndarray:
        """One bucket per n-gram length and direction: the binned share of one text's distinct n-grams in the other."""
        out = []
        for n in range(self.ngram_min, self.ngram_max + 1):
            grams_a = set(hash_ngrams(a, 2**62, n, n).tolist())
            grams_b = set(hash_ngrams(b, 2**62, n, n).tolist())
            common = len(grams_a & grams_b)
            for way, grams in enumerate((grams_b, grams_a)):  # 0: b's found in a, 1: a's found in b
                share = common / len(grams) if grams else 0.0
                at = min(int(share * self.overlap_bins), self.overlap_bins - 1)
                out.append(np.uint64((n * 2 + way) * 1024 + at))
        h = finalise(np.array(out, np.uint64) ^ SIDE_SALTS[3])
        return (h % np.uint64(self.buckets)).astype(np.int64)

    def __call__(self, texts: Sequence[TextInput]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, offsets, values = [], [], []
        at = 0
        for text in texts:
            sides = self.sides_of(text)
            bags = [_normalised(side) for side in sides] if self.pair_norm == "side" else [
                _normalised(np.concatenate(sides))]
            offsets.append(at)
            for b, v in bags:
                at += len(b)
                ids.append(b)
                values.append(v)
        if not texts:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        return (torch.from_numpy(np.concatenate(ids)), torch.tensor(offsets, dtype=torch.int64),
                torch.from_numpy(np.concatenate(values)))


def _normalised(buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct buckets, their counts over the L2 norm): long reviews do not shout."""
    b, counts = np.unique(buckets, return_counts=True)
    c = counts.astype(np.float32)
    return b, c / max(float(np.sqrt((c * c).sum())), 1.0)


class WideLinear(nn.Module):
    """logits [B, L] = sum over a text's buckets of value * weight[bucket] + bias; zeros at the start."""

    def __init__(self, buckets: int, num_labels: int):
        super().__init__()
        self.weight = nn.EmbeddingBag(buckets, num_labels, mode="sum", sparse=True)  # sparse: only touched rows
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.weight(ids, offsets, per_sample_weights=values) + self.bias


class WidePart(nn.Module):
    """The wide model of a classifier version, and how it meets the deep logits."""

    def __init__(self, num_labels: int, kind: str = "wide_deep", combine: str = "sum", buckets: int = 2**18,
                 ngram_min: int = 1, ngram_max: int = 2, pair_norm: str = "joint", overlap_bins: int = 0):
        super().__init__()
        if kind not in ("wide", "wide_deep") or combine not in ("sum", "gate"):
            raise ValueError(f"kind wide | wide_deep and combine sum | gate, got {kind!r}, {combine!r}")
        self.kind, self.combine = kind, combine
        self.features = HashedNgrams(buckets, ngram_min, ngram_max, pair_norm, overlap_bins)
        self.linear = WideLinear(buckets, num_labels)
        # a_deep, a_wide, c (gate only).  The gate starts as the wide model alone: a fresh head on the
        # encoder answers at chance and would only add noise, so the deep part earns its weight on the stream
        self.mix = nn.Parameter(torch.tensor([0.0, 1.0, 0.0] if combine == "gate" else [1.0, 1.0, 0.0]))

    @property
    def uses_deep(self) -> bool:
        return self.kind == "wide_deep"

    def forward(self, texts: Sequence[TextInput]) -> torch.Tensor:
        """[B, L] the wide logits."""
        ids, offsets, values = self.features(texts)
        dev = self.linear.bias.device
        return self.linear(ids.to(dev), offsets.to(dev), values.to(dev))

    def combined(self, deep: torch.Tensor | None, wide: torch.Tensor) -> torch.Tensor:
        """[B, L] the served logits from the parts' logits (deep None for kind wide)."""
        if deep is None or not self.uses_deep:
            return wide
        if self.combine == "sum":
            return deep + wide
        return self.mix[0] * deep + self.mix[1] * wide + self.mix[2]

    def spec(self) -> dict[str, Any]:
        f = self.features
        return {"kind": self.kind, "combine": self.combine, "buckets": f.buckets, "ngram_min": f.ngram_min,
                "ngram_max": f.ngram_max, "num_labels": self.linear.bias.numel(), "pair_norm": f.pair_norm,
                "overlap_bins": f.overlap_bins}

    def files(self) -> dict[str, bytes]:
        return {WIDE_FILE: json.dumps(self.spec(), sort_keys=True).encode()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"wide.{k}": v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


def wide_from_files(files: Mapping[str, bytes]) -> WidePart | None:
    """The (zero) wide part a version's files describe; None for a deep-only version."""
    if WIDE_FILE not in files:
        return None
    spec = json.loads(files[WIDE_FILE])
    return WidePart(int(spec["num_labels"]), spec["kind"], spec["combine"], int(spec["buckets"]),
                    int(spec["ngram_min"]), int(spec["ngram_max"]), spec.get("pair_norm", "joint"),
                    int(spec.get("overlap_bins", 0)))  # a version written before these keys: as it was served


def split_wide(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the deep model's entries, the wide part's entries without the `wide.` prefix)."""
    deep = {k: v for k, v in state.items() if not k.startswith("wide.")}
    wide = {k[len("wide."):]: v for k, v in state.items() if k.startswith("wide.")}
    return deep, wide


def new_wide(model: Any, num_labels: int) -> WidePart | None:
    """A fresh wide part for `feedback.model` (core.config.feedback.FeedbackModelSection); None for kind deep."""
    if model.kind == "deep":
        return None
    return WidePart(num_labels, model.kind, model.combine, model.wide_buckets, model.wide_ngram_min,
                    model.wide_ngram_max, model.wide_pair_norm, model.wide_overlap_bins)
