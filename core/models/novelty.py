"""Novelty: how unlike the inputs seen so far a request is, as an autoencoder's reconstruction error.

    request text -> reference encoder (the served classifier's first version) -> [CLS] or mean [H]
                 -> standardise (running mean / std of the training features)
                 -> autoencoder H -> hidden -> bottleneck -> hidden -> H
                 -> squared error -> percentile among the calibration set's errors (0..100)

The reference encoder stays fixed for a run: the live classifier's own
representation moves with every version, which would read as novelty.  The
calibration set is features the autoencoder never trained on, drawn from the
same stream, so on inputs like those it has seen the percentile is uniform
over 0..100 whatever the autoencoder version; inputs from a new domain score
near the top.  The [CLS] state is the default feature: an MLM-pretrained
encoder's token mean is dominated by the characters both domains share, and
the [CLS] state separates reviews from news sentences better (benchmarks/README.md).  A version in the registry holds the autoencoder's weights and
`novelty.json` (shape, pooling, the reference version and the sorted calibration errors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

FILE = "novelty.json"


class Autoencoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        self.shape = (in_dim, hidden, bottleneck)
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.decoder = nn.Sequential(nn.Linear(bottleneck, hidden), nn.GELU(), nn.Linear(hidden, in_dim))
        # running statistics of the training features: the network sees standardised inputs
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("var", torch.ones(in_dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.float64))

    def observe(self, x: torch.Tensor) -> None:
        """Fold a batch into the running mean / variance (Chan et al.'s parallel update)."""
        n, total = float(len(x)), float(self.seen) + len(x)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        delta = mean - self.mean
        self.var.copy_((self.var * float(self.seen) + var * n + delta**2 * float(self.seen) * n / total) / total)
        self.mean.add_(delta * n / total)
        self.seen.fill_(total)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.var.clamp_min(1e-6).sqrt()

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """[B] mean squared reconstruction error of raw features x [B, H]."""
        z = self.standardise(x)
        return ((self.decoder(self.encoder(z)) - z) ** 2).mean(1)


@dataclass
class NoveltyScorer:
    """An autoencoder version with its calibration errors: features in, percentiles out."""

    model: Autoencoder
    calibration: np.ndarray  # sorted reconstruction errors of held-back features
    reference: dict[str, Any]  # {"policy_id", "version"}: the encoder whose features it reads
    pooling: str = "cls"  # which of that encoder's states: cls | mean

    @torch.no_grad()
    def errors(self, features: np.ndarray) -> np.ndarray:
        self.model.eval()
        return self.model.errors(torch.as_tensor(features, dtype=torch.float32)).numpy()

    def percentiles(self, features: np.ndarray) -> np.ndarray:
        """[N] in 0..100: the share of calibration errors below each input's error."""
        errs = self.errors(features)
        return 100.0 * np.searchsorted(self.calibration, errs, side="left") / max(len(self.calibration), 1)

    def files(self) -> dict[str, bytes]:
        in_dim, hidden, bottleneck = self.model.shape
        meta = {"in_dim": in_dim, "hidden": hidden, "bottleneck": bottleneck, "reference": self.reference,
                "pooling": self.pooling,
                "calibration": [float(x) for x in self.calibration]}
        return {FILE: json.dumps(meta).encode()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}


def calibrate(model: Autoencoder, features: np.ndarray, reference: dict[str, Any],
              pooling: str = "cls") -> NoveltyScorer:
    scorer = NoveltyScorer(model, np.zeros(0), reference, pooling)
    scorer.calibration = np.sort(scorer.errors(features))
    return scorer


def scorer_from_version(weights: Mapping[str, Any], files: Mapping[str, bytes]) -> NoveltyScorer:
    """Rebuild a published novelty version (registry weights + files)."""
    if FILE not in files:
        raise ValueError(f"not a novelty version: no {FILE}")
    meta = json.loads(files[FILE])
    model = Autoencoder(int(meta["in_dim"]), int(meta["hidden"]), int(meta["bottleneck"]))
    state = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
             for k, v in weights.items()}
    model.load_state_dict(state)
    return NoveltyScorer(model, np.asarray(meta["calibration"], dtype=np.float64), dict(meta["reference"]),
                         str(meta.get("pooling", "mean")))


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half: the Mann-Whitney U over n_pos x n_neg."""
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u / (len(positives) * len(negatives)))
