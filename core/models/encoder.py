"""BERT masked-LM models: built from a preset, or loaded from a pretrained directory.

Presets:
  cpu-small  4 layers x 256 wide, 4 heads: learns a character-level Chinese
             MLM in minutes on 2 CPU cores.
  gpu-base   BERT-base shape (12 x 768, 12 heads) for a GPU learner.

Models built here carry ALiBi slopes in their config (`alibi_slopes`, kept in
config.json); `encoder_hidden` adds the bias in every attention layer through
BERT's 4-D attention mask.  A plain `BertModel.from_pretrained` of such a
directory loads the weights but not the bias: call `encoder_hidden` (or pass
`attention_bias(...)` as the attention mask) to get the same outputs.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from core.config.model import ModelSection

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024, dropout=0.0),
    "gpu-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072, dropout=0.1),
}


class ModelError(ValueError):
    """A model that cannot be trained with the given tokenizer / config; str() says why."""


def bert_config(cfg: ModelSection, vocab_size: int, pad_token_id: int, max_positions: int) -> BertConfig:
    """A BertConfig from the preset plus the overrides in `cfg`."""
    p = dict(PRESETS[cfg.preset])
    for key, attr in (
        ("num_hidden_layers", "num_layers"),
        ("hidden_size", "hidden_size"),
        ("num_attention_heads", "num_heads"),
        ("intermediate_size", "intermediate_size"),
        ("dropout", "dropout"),
    ):
        if getattr(cfg, attr) is not None:
            p[key] = getattr(cfg, attr)
    if p["hidden_size"] % p["num_attention_heads"]:
        raise ModelError(f"hidden_size {p['hidden_size']} is not a multiple of num_heads {p['num_attention_heads']}")
    dropout = p.pop("dropout")
    extra = {"alibi_slopes": alibi_slopes(p["num_attention_heads"])} if cfg.position_bias == "alibi" else {}
    return BertConfig(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        **p,
        **extra,
    )


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head slopes from 1 (a head that looks at its neighbours) down to 1/32 (nearly global)."""
    if num_heads == 1:
        return [1.0]
    return [2.0 ** (-5.0 * h / (num_heads - 1)) for h in range(num_heads)]


def attention_bias(config: BertConfig, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The attention mask to hand BERT for ids [B, T] and padding mask [B, T] (1 = real token).

    Without ALiBi slopes in the config this is `mask` itself (BERT's own padding
    handling).  With them: an additive [B, H, T, T] mask, -slope_h * |i - j| plus a
    large negative at padded keys, in the autocast dtype when autocast is on (the
    fused attention kernels want the mask in the query's dtype).
    """
    slopes = getattr(config, "alibi_slopes", None)
    if not slopes:
        return mask
    device = ids.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
    bias = _distance_bias(tuple(slopes), ids.shape[1], device, dtype)  # [1, H, T, T], shared: never written to
    if mask is None:
        return bias
    return bias.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(dtype).min / 2)  # [B, H, T, T]


@functools.lru_cache(maxsize=64)
def _distance_bias(slopes: tuple[float, ...], length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """-slope_h * |i - j| as [1, H, T, T]: the same for every forward pass of a length, so built once."""
    pos = torch.arange(length, device=device)
    dist = (pos[:, None] - pos[None, :]).abs().to(torch.float32)  # [T, T]
    bias = -torch.tensor(slopes, device=device, dtype=torch.float32)[:, None, None] * dist  # [H, T, T]
    return bias.unsqueeze(0).to(dtype)


def encoder_hidden(bert: BertModel, ids: torch.Tensor, mask: torch.Tensor | None = None,
                   token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """last_hidden_state [B, T, H] of a BertModel, with the config's ALiBi bias if it has one.

    token_type_ids [B, T]: 0 for the first text of a pair, 1 for the second (None: all 0).
    """
    if token_type_ids is not None and getattr(bert.config, "type_vocab_size", 2) < 2:
        token_type_ids = None  # an encoder with one segment embedding (RoBERTa-style) reads pairs by [SEP] alone
    return bert(input_ids=ids, attention_mask=attention_bias(bert.config, ids, mask),
                token_type_ids=token_type_ids).last_hidden_state


def build_mlm_model(config: BertConfig | dict[str, Any], seed: int = 0) -> BertForMaskedLM:
    if isinstance(config, dict):
        config = BertConfig.from_dict(config)
    torch.manual_seed(seed)  # every DDP rank starts from the same weights
    return BertForMaskedLM(config)


def load_pretrained_mlm(path: str | os.PathLike[str]) -> BertForMaskedLM:
    """A BERT-family directory; a missing MLM head (e.g. a sentence encoder) is initialised fresh."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json: not a pretrained model directory")
    try:
        # safetensors only: a pickled pytorch_model.bin runs code of whoever wrote it when it is read
        return BertForMaskedLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except Exception as exc:  # transformers raises several types for incompatible dirs
        raise ModelError(f"{path}: cannot load as BertForMaskedLM: {' '.join(str(exc).split())[:200]}") from None


def check_vocab_fits(config: BertConfig, tokenizer) -> None:
    """The tokenizer's ids must all index the model's embedding table, and sizes must agree."""
    n_tok, n_model = len(tokenizer), config.vocab_size
    if n_tok != n_model:
        raise ModelError(
            f"tokenizer vocabulary ({n_tok} tokens) does not match the model's embedding table ({n_model} rows)"
        )
    if tokenizer.pad_token_id is not None and config.pad_token_id not in (None, tokenizer.pad_token_id):
        raise ModelError(f"model pad_token_id {config.pad_token_id} != tokenizer's {tokenizer.pad_token_id}")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
