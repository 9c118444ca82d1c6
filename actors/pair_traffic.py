"""The predict request a traffic user sends: one text, a batch of texts, a pair, or a batch of pairs.

The rows' model inputs (core/data/inputs.py) say which: data with a text pair
column yields `(text, text_pair)` tuples, sent as `{"text", "text_pair"}` or
`{"pairs": [[a, b], ...]}`; plain texts as `{"text"}` or `{"texts": [...]}`.
"""

from __future__ import annotations

from typing import Any, Sequence

from core.data.inputs import TextInput, any_pairs


def predict_body(inputs: Sequence[TextInput], batched: bool) -> dict[str, Any]:
    """The JSON body of POST /v1/predict for `inputs` (`batched`: the list form, even for one)."""
    if not any_pairs(inputs):
        return {"texts": list(inputs)} if batched else {"text": inputs[0]}
    if batched:
        return {"pairs": [list(x) for x in inputs]}
    a, b = inputs[0]
    return {"text": a, "text_pair": b}
