"""The `model` groups: the BERT encoder's shape (MLM pretraining), and the served text classifier
(where it starts, its shape, its wide part, its input length)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from core.config.base import Section


class ModelSection(Section):
    # cpu-small: fast enough to learn in minutes on 2 cores; gpu-base: BERT-base sized.
    preset: Literal["cpu-small", "gpu-base"] = "cpu-small"
    pretrained_dir: Path | None = None  # a BERT-family directory (config.json + weights)
    # Optional overrides of the preset (None keeps the preset's value).
    num_layers: int | None = Field(default=None, ge=1)
    hidden_size: int | None = Field(default=None, ge=8)  # None keeps the preset's
    num_heads: int | None = Field(default=None, ge=1)  # attention heads; None keeps the preset's
    intermediate_size: int | None = Field(default=None, ge=8)  # feed-forward width; None keeps the preset's
    dropout: float | None = Field(default=None, ge=0, lt=1)  # None keeps the preset's
    # ALiBi (Press et al. 2022; MosaicBERT): each head adds -slope * |i - j| to its
    # attention scores, slopes 1 .. 1/32 across heads.  A fresh BERT's attention
    # starts uniform over all 128 positions, so the neighbours' signal is diluted
    # and a small model sits at the unigram plateau (predicting the most frequent
    # tokens) for a long time; the bias lets it use context from the start.  "none": plain BERT.
    position_bias: Literal["alibi", "none"] = "alibi"


class FeedbackModelSection(ModelSection):
    """The served classifier: the deep encoder (ModelSection's keys shape a random init), a wide
    linear model on hashed character n-grams (core/models/wide.py), or both; and where it starts."""

    # The encoder to start from: a registry URI + policy id published by `evolve pretrain`;
    # None, or no such policy there: a random init of this shape with a tokenizer trained on the
    # traffic texts (the loop still learns, from a weaker start; the run says so).
    encoder_registry: str | None = None
    encoder_policy: str = "encoder"  # the encoder's policy id in encoder_registry
    encoder_version: int | None = None  # None: the latest
    # An `mlm` loop of this run to pretrain the encoder beside the classifier: when the classifier
    # has no encoder of its own (no pretrained_dir, none at encoder_registry), it starts on that
    # loop's tokenizer and shape and re-bases onto each better encoder the loop publishes; with an
    # encoder of its own the classifier keeps it and the loop stands down.
    encoder_loop: str | None = None
    # Or a BERT-family checkpoint in Hugging Face format (config, weights, tokenizer): a
    # directory written by `save_pretrained`, or a hub name when the machine is online.
    pretrained_dir: str | None = None
    vocab_size: int = Field(default=6000, ge=100)  # of the tokenizer trained when there is no encoder
    # A random init's encoder: narrower than cpu-small, so a CPU replica answers quickly (None: the preset's).
    num_layers: int | None = Field(default=3, ge=1)
    hidden_size: int | None = Field(default=192, ge=8)  # None keeps the preset's
    num_heads: int | None = Field(default=4, ge=1)  # attention heads; None keeps the preset's
    intermediate_size: int | None = Field(default=768, ge=8)  # feed-forward width; None keeps the preset's
    max_len: int = Field(default=128, ge=8, le=512)  # tokens per text; longer ones are cut
    kind: Literal["deep", "wide", "wide_deep"] = "deep"  # the encoder, the wide n-gram model, or both
    # wide_deep: `gate` trains each part on its own loss and learns a_deep * deep + a_wide * wide + c
    # on top (stacking), starting from the wide part alone; `sum` trains deep + wide logits jointly
    # on one loss.  The gate keeps a weak deep part from pulling the sum below the wide model's own
    # accuracy (benchmarks/README.md, loop_vs_offline).
    combine: Literal["sum", "gate"] = "gate"
    wide_buckets: int = Field(default=2**20, ge=2, le=2**26)  # hash size: the wide model's memory is fixed by it
    wide_ngram_min: int = Field(default=1, ge=1, le=8)  # shortest character n-gram of the wide part
    wide_ngram_max: int = Field(default=3, ge=1, le=8)  # trigrams: Chinese words run 1-3 characters
    # Pairs only (core/models/wide.py): `joint` L2-normalises a pair's sides together, `side` each on its own
    wide_pair_norm: Literal["joint", "side"] = "joint"
    wide_overlap_bins: int = Field(default=0, ge=0, le=100)  # pairs: bins of the shared share of n-grams; 0: none
    # AdaGrad step size of the wide part (per-feature rates); a live loop replays rows (rehearsal,
    # traffic that repeats) and larger steps overfit them
    wide_lr: float = Field(default=0.1, gt=0)

    @model_validator(mode="after")
    def _start(self) -> "FeedbackModelSection":
        if self.wide_ngram_min > self.wide_ngram_max:
            raise ValueError(f"wide_ngram_min {self.wide_ngram_min} > wide_ngram_max {self.wide_ngram_max}")
        if self.pretrained_dir and self.encoder_registry:
            raise ValueError("set one start: model.pretrained_dir or model.encoder_registry, not both")
        return self

