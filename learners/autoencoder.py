"""The novelty objective: an autoencoder on the reference encoder's features of request texts.

    batch of request texts (replay `text` table) -> reference encoder (frozen) -> [CLS] (or mean) features
        3 batches in 4: one Adam step on the reconstruction error
        1 batch in 4:   held back as calibration features (never trained on)
    every `publish_every` steps (the loop's evaluation): calibrate on the held-back features
        and publish to the registry as `<policy_id>-novelty`, promoted live at once

A new version is live at once, without a gate: the calibration makes any
version's percentiles comparable (uniform on inputs like the stream's), and
no client answer depends on it beyond the `novelty` figure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.models.novelty import Autoencoder, NoveltyScorer, calibrate
from core.config.novelty import NoveltySection, novelty_policy_id
from core.storage.registry import PolicyRegistry
from core.models.classifier import from_version
from learners.objective import ExportedPolicy, WorkerContext


@dataclass
class AutoencoderSetup:
    cfg: NoveltySection
    registry_uri: str | None  # None: calibrate but publish nowhere (a test, the benchmark)
    reference: dict[str, Any]  # {"policy_id", "version"} of the classifier whose encoder it reads
    weights: dict[str, Any] = field(repr=False)  # that classifier version
    files: dict[str, bytes] = field(repr=False)


class AutoencoderObjective:
    name = "novelty"
    summed_metrics = ("texts",)

    def setup(self, config: AutoencoderSetup, ctx: WorkerContext) -> None:
        self.setup_cfg, self.cfg = config, config.cfg
        self.encoder = from_version(config.weights, config.files)
        torch.manual_seed(self.cfg.seed)
        self.model = Autoencoder(self.encoder.model.head.in_features, self.cfg.hidden, self.cfg.bottleneck)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.held: deque[np.ndarray] = deque(maxlen=self.cfg.calibration_size)
        self.batches = 0
        self.scorer: NoveltyScorer | None = None
        self.published: int | None = None

    def features(self, texts: list[str]) -> np.ndarray:
        return self.encoder.pooled_features(texts, self.cfg.pooling)

    def step(self, texts: list[str]) -> dict[str, float]:
        feats = self.features(texts)
        self.batches += 1
        if self.batches % self.cfg.calibration_every == 0:
            self.held.extend(feats)
            return {"texts": len(texts)}
        return {"loss": self.train_on(feats), "texts": len(texts)}

    def train_on(self, feats: np.ndarray) -> float:
        x = torch.from_numpy(feats)
        self.model.observe(x)
        self.model.train()
        loss = self.model.errors(x).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def evaluate(self) -> dict[str, float]:
        figures: dict[str, float] = {"held_back": float(len(self.held))}
        if len(self.held) < self.cfg.min_calibration:
            return figures
        self.scorer = calibrate(self.model, np.stack(self.held), self.setup_cfg.reference, self.cfg.pooling)
        cal = self.scorer.calibration
        figures.update(calibration_p50=float(np.quantile(cal, 0.5)), calibration_p95=float(np.quantile(cal, 0.95)))
        if self.setup_cfg.registry_uri is not None:
            self.published = self._publish(self.scorer, figures)
            figures["novelty_version"] = float(self.published)
        return figures

    def _publish(self, scorer: NoveltyScorer, figures: dict[str, float]) -> int:
        registry = PolicyRegistry(self.setup_cfg.registry_uri)
        pid = novelty_policy_id(self.setup_cfg.reference["policy_id"])
        version = registry.publish(pid, scorer.weights(), files=scorer.files(), metadata={
            "parent_version": self.published, "metrics": figures,
            "info": {"kind": "novelty_autoencoder", "reference": self.setup_cfg.reference,
                     "trained_batches": self.batches},
        })
        registry.promote(pid, version)
        return version

    def state_dict(self) -> dict[str, Any]:
        held = np.stack(self.held) if self.held else np.zeros((0, self.model.shape[0]), np.float32)
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "held": torch.from_numpy(held),
                "batches": self.batches, "published": -1 if self.published is None else self.published}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.held.extend(state["held"].numpy())
        self.batches = int(state["batches"])
        self.published = None if int(state["published"]) < 0 else int(state["published"])

    def export_policy(self) -> ExportedPolicy:
        scorer = self.scorer or calibrate(self.model, np.stack(self.held) if self.held else
                                          np.zeros((1, self.model.shape[0]), np.float32), self.setup_cfg.reference,
                                          self.cfg.pooling)
        return ExportedPolicy(weights=scorer.weights(), files=scorer.files(),
                              info={"reference": self.setup_cfg.reference})
