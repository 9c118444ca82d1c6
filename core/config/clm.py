"""A `clm` loop's section: next-token (causal) pretraining of a small GPT-style language model.

The corpus, tokenizer, schedule, evaluation and pacing keys are the ones every
pretraining kind shares (`core/config/mlm.py: PretrainSection`); this adds
the causal model's shape and the continuations the run prints of fixed prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from core.config.base import Section
from core.config.mlm import PretrainSection


class CausalModelSection(Section):
    # cpu-small: a GPT-2-shaped model that learns in minutes on 2 cores; gpu-base: GPT-2 small's shape.
    preset: Literal["cpu-small", "gpu-base"] = "cpu-small"
    # A Hugging Face causal-LM directory (config.json + safetensors weights, and its tokenizer unless
    # tokenizer.pretrained_dir names another): trained on from where it is, never downloaded.
    pretrained_dir: Path | None = None
    # Optional overrides of the preset (None keeps the preset's value).
    num_layers: int | None = Field(default=None, ge=1)
    hidden_size: int | None = Field(default=None, ge=8)  # None keeps the preset's
    num_heads: int | None = Field(default=None, ge=1)  # attention heads; None keeps the preset's
    intermediate_size: int | None = Field(default=None, ge=8)  # feed-forward width; None keeps the preset's
    dropout: float | None = Field(default=None, ge=0, lt=1)  # None keeps the preset's


class SamplesSection(Section):
    # Openings the run continues with the published model, printed in its log and kept as an event.
    prompts: list[str] = Field(default_factory=lambda: ["中国", "这家酒店", "今天"], max_length=16)
    max_new_tokens: int = Field(default=32, ge=1, le=512)  # tokens sampled after each prompt
    temperature: float = Field(default=0.8, gt=0, le=10)  # softmax temperature of the samples
    top_p: float = Field(default=0.95, gt=0, le=1)  # nucleus sampling: the smallest set of tokens this likely
    seed: int = 0  # the sampler's seed: the same model gives the same samples


class CLMSection(PretrainSection):
    """Next-token pretraining of a causal language model, published for generators to start from."""

    kind: Literal["clm"] = "clm"  # next-token pretraining of a causal language model
    model: CausalModelSection = Field(default_factory=CausalModelSection)  # the causal model's shape, or its directory
    samples: SamplesSection = Field(default_factory=SamplesSection)  # continuations of fixed prompts, in the log
    policy_id: str = "lm"  # the language model's policy id in the registry (generators start from it)
