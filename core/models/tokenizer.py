"""Tokenizers for masked and causal LM: train a WordPiece one on the corpus, or load a pretrained one.

The trained tokenizer splits every CJK character into its own token (BERT's
Chinese handling) and learns WordPiece units for the Latin words and digits
in between; NFKC first folds full-width digits and letters (common in People's
Daily) into their ASCII forms.  It is saved as a transformers
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained(dir)` loads it.

`pack_blocks` turns tokenized texts into fixed-length training blocks with no
padding: texts are concatenated with [SEP] between them and cut every
seq_len - 1 tokens, each block starting with [CLS] (RoBERTa's FULL-SENTENCES).  A causal
LM packs the same way with its own ids: its end-of-text token in both places.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class TokenizerError(ValueError):
    """A tokenizer that cannot be used for masked-LM; str() says why."""


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 6000, min_frequency: int = 3, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            # handle_chinese_chars puts spaces around every CJK character: one token each.
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok = _stable_ids(tok)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _stable_ids(tok):
    """The same texts -> the same token ids in every process.

    The trainer adds the "##" continuation alphabet in hash-map order, so those ids (and with
    them a seeded model's embeddings) would differ from process to process.  WordPiece matches the
    longest piece whatever its id, so renumbering is free: special tokens first, the rest sorted.
    """
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    special = [t for t in SPECIAL_TOKENS if t in vocab]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(special + sorted(set(vocab) - set(special)))}
    for added in spec.get("added_tokens", []):
        added["id"] = spec["model"]["vocab"][added["content"]]
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def check_mlm_tokenizer(tok, where: str = "tokenizer") -> None:
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"{where}: a fast (Rust) tokenizer is needed")
    missing = [name for name in ("mask_token", "cls_token", "sep_token", "pad_token") if getattr(tok, name) is None]
    if missing:
        raise TokenizerError(f"{where}: masked-LM needs special tokens, missing {', '.join(missing)}")


def check_causal_tokenizer(tok, where: str = "tokenizer") -> None:
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"{where}: a fast (Rust) tokenizer is needed")


def load_tokenizer(path: str | os.PathLike[str], check: Callable[[Any, str], None] | None = check_mlm_tokenizer
                   ) -> PreTrainedTokenizerFast:
    """A tokenizer directory (ours, or a pretrained model's, e.g. MiniLM); checked for its use
    (masked-LM unless `check` says otherwise; None: not checked)."""
    path = Path(path)
    if not path.is_dir():
        raise TokenizerError(f"{path}: tokenizer directory not found")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/... for broken dirs
        raise TokenizerError(f"{path}: cannot load a tokenizer: {' '.join(str(exc).split())[:200]}") from None
    if check is not None:
        check(tok, str(path))
    return tok


def tokenizer_files(tok: PreTrainedTokenizerFast) -> dict[str, bytes]:
    """The files `save_pretrained` writes, as bytes (for the registry and checkpoints)."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return {name: (Path(tmp) / name).read_bytes() for name in os.listdir(tmp) if (Path(tmp) / name).is_file()}


def tokenizer_from_files(files: dict[str, bytes], check: Callable[[Any, str], None] | None = check_mlm_tokenizer
                         ) -> PreTrainedTokenizerFast:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return load_tokenizer(tmp, check)


def encode_texts(tok: PreTrainedTokenizerFast, texts: Sequence[str], batch: int = 4096) -> list[list[int]]:
    """Token ids of each text, without special tokens (pack_blocks adds them)."""
    out: list[list[int]] = []
    for start in range(0, len(texts), batch):
        enc = tok(list(texts[start : start + batch]), add_special_tokens=False, return_attention_mask=False)
        out.extend(enc["input_ids"])
    return out


def pack_blocks(ids: Iterable[Sequence[int]], seq_len: int, cls_id: int, sep_id: int) -> np.ndarray:
    """[n_blocks, seq_len] int32: [CLS] t t t [SEP] t t ... (texts run on across block ends; no padding).

    The tail that does not fill a whole block is dropped.
    """
    if seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    pieces = [np.asarray(list(x) + [sep_id], dtype=np.int32) for x in ids if len(x)]
    if not pieces:
        return np.zeros((0, seq_len), dtype=np.int32)
    stream = np.concatenate(pieces)
    width = seq_len - 1
    n = len(stream) // width
    body = stream[: n * width].reshape(n, width)
    return np.concatenate([np.full((n, 1), cls_id, dtype=np.int32), body], axis=1)
