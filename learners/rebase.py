"""The online learner re-bases its classifier onto a better encoder that an MLM loop of the run publishes.

Every `poll_every` updates rank 0 looks at the encoder policy in the registry;
under DDP the ranks agree on what it saw (one all_reduce), so every rank
re-bases at the same update.  Re-basing loads the new encoder into the
classifier's encoder, gives it a fresh head and fresh optimizer moments, and
sets a gated wide part's deep weight back to 0: right after a re-base the
served answers are the wide part's, as at the start, and the deep part earns its
weight again on the stream.  The candidates that follow are judged by the gate
like any other; nothing here makes them live.

An encoder whose tokenizer or shape differs from the classifier's is refused
(the classifier reads token ids of its own vocabulary), once, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from core.storage.registry import PolicyRegistry, RegistryError

VOCABULARY_FILES = ("tokenizer.json", "vocab.txt")  # what maps text to ids (the configs around them may differ)
SHAPE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")


@dataclass
class EncoderFeed:
    """Where the encoders come from (pickled into the online setup)."""

    registry_uri: str
    policy_id: str
    version: int | None = None  # the encoder the classifier is on; None: a random start of its shape
    poll_every: int = 20  # updates between looks at the registry


@dataclass
class Rebaser:
    feed: EncoderFeed
    files: Mapping[str, bytes]  # the classifier's files: its tokenizer and encoder config
    rank: int = 0
    world_size: int = 1
    version: int | None = None
    refused: dict[int, str] = field(default_factory=dict)  # encoder version -> why it was not taken
    rebases: int = 0

    def __post_init__(self) -> None:
        self.version = self.feed.version if self.version is None else self.version
        self.registry = PolicyRegistry(self.feed.registry_uri)

    def newer(self, updates: int) -> int | None:
        """At a polling update: the newest encoder version if it is newer than the classifier's (all ranks agree)."""
        if updates % self.feed.poll_every:
            return None
        seen = -1
        if self.rank == 0:
            latest = self.registry.latest(self.feed.policy_id)
            seen = latest.version if latest is not None else -1
        if self.world_size > 1:
            import torch.distributed as dist

            t = torch.tensor([float(seen)])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            seen = int(t.item())
        if seen <= (self.version or 0) or seen in self.refused:
            return None
        return seen

    def load(self, version: int) -> dict[str, Any] | None:
        """The encoder's weights, or None (and the reason in `refused`) when the classifier cannot take them."""
        try:
            loaded = self.registry.load(self.feed.policy_id, version)
        except RegistryError as exc:
            self.refused[version] = f"cannot load: {exc}"
            return None
        why = mismatch(self.files, loaded.files)
        if why is not None:
            self.refused[version] = why
            return None
        return dict(loaded.weights)

    def took(self, version: int) -> None:
        self.version = version
        self.rebases += 1


def mismatch(classifier: Mapping[str, bytes], encoder: Mapping[str, bytes]) -> str | None:
    """Why an encoder cannot go under this classifier (None: it can)."""
    mine = {k: _parsed(k, v) for k, v in classifier.items() if k in VOCABULARY_FILES}
    theirs = {k: _parsed(k, v) for k, v in encoder.items() if k in VOCABULARY_FILES}
    if not mine or mine != theirs:
        return "its tokenizer differs from the classifier's"
    try:
        a, b = (json.loads(files["config.json"]) for files in (classifier, encoder))
    except (KeyError, ValueError):
        return "no readable config.json"
    differ = [k for k in SHAPE if a.get(k) != b.get(k)]
    return f"its shape differs from the classifier's encoder ({', '.join(differ)})" if differ else None


def _parsed(name: str, data: bytes) -> Any:
    return json.loads(data) if name.endswith(".json") else data


def rebase(bundle: Any, encoder_weights: Mapping[str, Any], seed: int) -> None:
    """Put the encoder under the classifier: its weights (strict), a fresh head, a gated wide part's deep weight 0."""
    state = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
             for k, v in encoder_weights.items()}
    model = bundle.model
    model.bert.load_state_dict(state)  # raises on another shape: checked by the caller's load first
    with torch.random.fork_rng(devices=[]):  # the run's own random stream is left as it was
        torch.manual_seed(seed)
        model.head.reset_parameters()
    wide = bundle.wide
    if wide is not None and wide.combine == "gate":
        with torch.no_grad():
            wide.mix[0] = 0.0
