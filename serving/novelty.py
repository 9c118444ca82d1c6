"""A feedback replica's novelty scorer: the live autoencoder of `<policy_id>-novelty`, followed in the registry.

    refresh() (every few seconds, off the event loop) -> the novelty policy's live version changed?
        -> load its autoencoder (and, once, the reference classifier whose encoder it reads)
    score(texts) -> each text's novelty percentile (0..100), or None before the first version

Plain logic: `serving/feedback_app.py` calls it; tests drive it with a registry on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from core.models.novelty import NoveltyScorer, scorer_from_version
from core.storage.registry import PolicyRegistry
from core.models.classifier import ClassifierBundle, from_version
from serving.refresh import keep_refreshed



@dataclass(frozen=True)
class _Scoring:
    """Replaced whole by a refresh, so a batch scores with one version."""

    scorer: NoveltyScorer
    encoder: ClassifierBundle
    version: int


class NoveltyFollower:
    def __init__(self, registry_uri: str, novelty_policy_id: str):
        self.registry = PolicyRegistry(registry_uri, create=False)
        self.policy_id = novelty_policy_id
        self.current: _Scoring | None = None
        self._encoders: dict[tuple[str, int], ClassifierBundle] = {}

    def refresh(self) -> int | None:
        """Load the live novelty version if it changed; returns the version in use."""
        latest = self.registry.latest(self.policy_id, "live")
        if latest is None or (self.current is not None and self.current.version == latest.version):
            return self.current.version if self.current else None
        loaded = self.registry.load(self.policy_id, latest.version)
        scorer = scorer_from_version(loaded.weights, loaded.files)
        self.current = _Scoring(scorer, self._encoder(scorer.reference), latest.version)
        return latest.version

    def _encoder(self, reference: dict[str, Any]) -> ClassifierBundle:
        key = (str(reference["policy_id"]), int(reference["version"]))
        if key not in self._encoders:
            ref = self.registry.load(*key)
            self._encoders = {key: from_version(ref.weights, ref.files)}  # one reference per run
        return self._encoders[key]

    def score(self, texts: Sequence[str]) -> list[float | None]:
        scoring = self.current
        if scoring is None:
            return [None] * len(texts)
        values = scoring.scorer.percentiles(scoring.encoder.pooled_features(list(texts), scoring.scorer.pooling))
        return [round(float(v), 1) for v in values]


async def follow(follower: NoveltyFollower, interval_s: float = 5.0) -> None:
    """A replica's background task: the novelty scorer stays the registry's latest."""
    await keep_refreshed(follower.refresh, f"novelty of {follower.policy_id}", interval_s)
