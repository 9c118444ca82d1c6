"""Causal (next-token) language models: a GPT-2-shaped model built from config, any Hugging Face
causal-LM directory, and a published version loaded back in one call.

Presets (GPT-2's architecture, learned positions):
  cpu-small  4 layers x 256 wide, 4 heads: learns character-level Chinese in minutes on 2 cores.
  gpu-base   GPT-2 small's shape (12 x 768, 12 heads) for a GPU learner.

Text layout: every text is preceded by the model's `bos_token_id` and followed by its
`eos_token_id` (GPT-2's convention, where both are <|endoftext|>; a model built here uses the
trained tokenizer's [SEP] for both), so packed training blocks, a prompt and a sampled
continuation all read the same way: `prompt_ids` puts the start token before the prompt, and
sampling ends at the end token.

A version in the registry holds the model's weights (a tied tensor once: the output projection
shares the embedding), its `config.json` and its tokenizer's files; `load_causal_lm` returns
them as a transformers model and tokenizer, ready for `generate`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, PretrainedConfig, PreTrainedModel

from core.config.clm import CausalModelSection
from core.models.encoder import ModelError

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": dict(n_layer=4, n_embd=256, n_head=4, n_inner=1024, dropout=0.0),
    "gpu-base": dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, dropout=0.1),
}
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")  # how transformers names its causal-LM classes


def gpt2_config(cfg: CausalModelSection, vocab_size: int, start_id: int, end_id: int, pad_id: int | None,
                positions: int) -> GPT2Config:
    """A GPT2Config from the preset plus the overrides in `cfg`."""
    p = dict(PRESETS[cfg.preset])
    for key, attr in (("n_layer", "num_layers"), ("n_embd", "hidden_size"), ("n_head", "num_heads"),
                      ("n_inner", "intermediate_size"), ("dropout", "dropout")):
        if getattr(cfg, attr) is not None:
            p[key] = getattr(cfg, attr)
    if p["n_embd"] % p["n_head"]:
        raise ModelError(f"hidden_size {p['n_embd']} is not a multiple of num_heads {p['n_head']}")
    dropout = p.pop("dropout")
    return GPT2Config(vocab_size=vocab_size, n_positions=positions, bos_token_id=start_id, eos_token_id=end_id,
                      pad_token_id=pad_id, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **p)


def config_from_dict(config: dict[str, Any]) -> PretrainedConfig:
    """The transformers config a `to_dict()` describes (its `model_type` names the class)."""
    config = dict(config)
    return AutoConfig.for_model(config.pop("model_type"), **config)


def build_causal_lm(config: PretrainedConfig | dict[str, Any], seed: int = 0) -> PreTrainedModel:
    if isinstance(config, dict):
        config = config_from_dict(config)
    torch.manual_seed(seed)  # every DDP rank starts from the same weights
    return AutoModelForCausalLM.from_config(config)


def pretrained_config(path: str | os.PathLike[str]) -> PretrainedConfig:
    """The config of a causal-LM directory, refused with the reason when it is not one."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json: not a pretrained model directory")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # unknown model_type, unreadable JSON, ...
        raise ModelError(f"{path}: cannot read a model config: {_one_line(exc)}") from None
    heads = getattr(config, "architectures", None) or []
    if heads and not any(h.endswith(CAUSAL_HEADS) for h in heads):
        raise ModelError(f"{path}: a {', '.join(heads)}, not a causal language model")
    if not any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        # a pickled pytorch_model.bin runs code of whoever wrote it when it is read
        raise ModelError(f"{path}: no model.safetensors: only safetensors weights are read")
    return config


def load_pretrained_causal_lm(path: str | os.PathLike[str]) -> PreTrainedModel:
    pretrained_config(path)
    try:
        # safetensors only: a pickled pytorch_model.bin runs code of whoever wrote it when it is read
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except Exception as exc:  # transformers raises several types for incompatible dirs
        raise ModelError(f"{path}: cannot load as a causal LM: {_one_line(exc)}") from None


def text_bounds(config: PretrainedConfig, tokenizer: Any) -> tuple[int, int]:
    """(the id before every text, the id after it): the model's bos / eos, else the tokenizer's."""
    end = _first_id(getattr(config, "eos_token_id", None), tokenizer.eos_token_id, tokenizer.sep_token_id)
    start = _first_id(getattr(config, "bos_token_id", None), tokenizer.bos_token_id, end)
    if end is None or start is None:
        raise ModelError("the model and its tokenizer name no end-of-text token (eos_token_id)")
    return start, end


def _first_id(*ids: Any) -> int | None:
    for i in ids:
        if isinstance(i, list):  # some configs list several eos ids; the first ends a text here
            i = i[0] if i else None
        if i is not None:
            return int(i)
    return None


def check_causal_vocab(config: PretrainedConfig, tokenizer: Any) -> None:
    """Every tokenizer id must index the model's embedding table (a model may have spare rows)."""
    if len(tokenizer) > config.vocab_size:
        raise ModelError(f"tokenizer vocabulary ({len(tokenizer)} tokens) exceeds the model's embedding table "
                         f"({config.vocab_size} rows)")


def context_length(config: PretrainedConfig) -> int | None:
    """How many positions the model reads (prompt and continuation together); None: no fixed limit."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


# ---- weights to and from the registry -----------------------------------------------------------
def export_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with each tensor once: safetensors refuses two names for one storage, and
    the model ties them again when it loads."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().cpu().contiguous()
    return out


def load_weights(model: PreTrainedModel, weights: dict[str, torch.Tensor]) -> PreTrainedModel:
    """`export_weights`'s output back into a model of the same config; only tied names may be absent."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    model.tie_weights()
    own = export_weights(model)
    untied = [k for k in missing if k in own]
    if untied or unexpected:
        raise ModelError(f"weights do not fit the model: missing {untied[:3]}, unexpected {unexpected[:3]}")
    return model


def load_causal_lm(registry: Any, policy_id: str, version: int | None = None,
                   stage: str | None = None) -> tuple[PreTrainedModel, Any]:
    """(model in eval mode, tokenizer) of a published causal LM: `version`, else `stage`'s, else the
    newest.  `registry`: a PolicyRegistry or its URI."""
    from core.models.tokenizer import check_causal_tokenizer, tokenizer_from_files
    from core.storage.registry import PolicyRegistry

    if not isinstance(registry, PolicyRegistry):
        registry = PolicyRegistry(registry, create=False)
    loaded = registry.load(policy_id, version=version, stage=stage)
    if "config.json" not in loaded.files:
        raise ModelError(f"policy {policy_id!r} v{loaded.meta.version} has no config.json: not a causal LM")
    model = build_causal_lm(json.loads(loaded.files["config.json"]))
    load_weights(model, loaded.weights)
    tokenizer = tokenizer_from_files({k: v for k, v in loaded.files.items() if k != "config.json"},
                                     check=check_causal_tokenizer)
    return model.eval(), tokenizer


# ---- prompts and continuations ------------------------------------------------------------------
def prompt_ids(model: PreTrainedModel, tokenizer: Any, prompt: str) -> list[int]:
    start, _ = text_bounds(model.config, tokenizer)
    return [start] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def decode(tokenizer: Any, ids: list[int]) -> str:
    """Token ids -> text; a WordPiece decoder's spaces between CJK characters are taken out."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return _CJK_GAP.sub("", text) if _is_wordpiece(tokenizer) else text


_CJK = r"\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_GAP = re.compile(rf"(?<=[{_CJK}]) | (?=[{_CJK}])")  # a space with a CJK character beside it


def _is_wordpiece(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordPiece"


@torch.no_grad()
def sample_continuations(model: PreTrainedModel, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                         temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """One sampled continuation per prompt (the prompt not repeated), the same for the same seed."""
    _, end = text_bounds(model.config, tokenizer)
    limit = context_length(model.config)
    out = []
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(model, tokenizer, prompt)
        room = max_new_tokens if limit is None else min(max_new_tokens, limit - len(ids))
        if room <= 0:
            out.append("")
            continue
        torch.manual_seed(seed + i)
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=room,
                             eos_token_id=end, pad_token_id=end)
        out.append(decode(tokenizer, gen[0, len(ids):].tolist()))
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
