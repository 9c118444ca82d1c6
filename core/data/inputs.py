"""What a classifier reads: one text, or a pair of texts (premise and hypothesis, two sentences).

A model input is a `str` or a `(text, text_pair)` tuple.  The same value flows
from the data to the traffic actors, the serving batch, the tokenizer, the
wide model, the gate and the learner, so no layer in between needs a second
argument.  Rows (events, replay rows, exports) keep the two texts in their own
columns, `text` and `text_pair`, the latter null for a single text; `as_input`
and `split_input` convert between the two forms.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence, Tuple, Union

TextInput = Union[str, Tuple[str, str]]

# Between the two sides wherever a pair must be one string (a hash key, a dedupe key): a
# control character no cleaned text contains.
PAIR_SEPARATOR = "\x1f"


def is_pair(item: TextInput) -> bool:
    return isinstance(item, tuple)


def as_input(text: str, text_pair: str | None = None) -> TextInput:
    """A row's columns -> the model input (a plain text when the pair column is null)."""
    return text if text_pair is None else (text, text_pair)


def split_input(item: TextInput) -> tuple[str, str | None]:
    """The model input -> (text, text_pair or None), the columns of a row."""
    if isinstance(item, tuple):
        return item[0], item[1]
    return item, None


def inputs_from_columns(texts: Sequence[str], pairs: Sequence[str | None] | None) -> list[TextInput]:
    """Columns `text` and `text_pair` (None: a table without the column) -> model inputs."""
    if pairs is None:
        return list(texts)
    return [as_input(t, p) for t, p in zip(texts, pairs)]


def input_of_row(row: Mapping[str, Any]) -> TextInput:
    """The model input of a row dict (event, joined row) that may lack the `text_pair` key."""
    return as_input(row["text"], row.get("text_pair"))


def input_key(item: TextInput) -> str:
    """One string per input: what the held-out hash and deduplication see."""
    return item if isinstance(item, str) else item[0] + PAIR_SEPARATOR + item[1]


def any_pairs(items: Iterable[TextInput]) -> bool:
    return any(isinstance(x, tuple) for x in items)
