"""serving/body.py: the shape of a JSON body measured before it is parsed, and every limit refused
with its reason; hostile bodies at the size limits cost no more than a generous bound."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.body import (JsonLimits, invalid_unicode, json_shape, parse_json, read_json)
from serving.join_rules import FeedbackRejected
from serving.requests import FEEDBACK_LIMITS

_TRICKY = st.text(alphabet=st.sampled_from(list('ab"\\[]{},: \n/') + ["好", "\u2028", "\x00"]), max_size=12)
_DOCS = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False,
                                                                                       allow_infinity=False) | _TRICKY,
                     lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_TRICKY, inner, max_size=5),
                     max_leaves=40)


def _reference(doc) -> tuple[int, int, int, int]:
    """(depth, separators, keys, containers) of a parsed document, walked: a container of n items
    is written with n - 1 commas."""
    if isinstance(doc, (list, dict)):
        items = list(doc.values()) if isinstance(doc, dict) else doc
        inner = [_reference(x) for x in items]
        return (1 + max((i[0] for i in inner), default=0), sum(i[1] for i in inner) + max(len(items) - 1, 0),
                sum(i[2] for i in inner) + (len(doc) if isinstance(doc, dict) else 0), sum(i[3] for i in inner) + 1)
    return 0, 0, 0, 0


@settings(max_examples=400, deadline=None)
@given(doc=_DOCS, ascii_only=st.booleans(), spaced=st.booleans())
def test_the_shape_is_measured_exactly_on_any_document(doc, ascii_only, spaced):
    raw = json.dumps(doc, ensure_ascii=ascii_only, indent=1 if spaced else None).encode()
    depth, commas, keys, containers = _reference(doc)
    shape = json_shape(raw)
    assert (shape.depth, shape.keys, shape.containers, shape.balanced) == (depth, keys, containers, True)
    assert shape.values == commas + containers + 1


@pytest.mark.parametrize("raw, depth", [
    (b'["\\\\", [[]]]', 3),  # an escaped backslash ends before the quote: the string closes
    (b'["\\\\\\"[", []]', 2),  # three backslashes: the quote is escaped, the bracket is text
    (b'{"a\\\\\\\\": "\\\\\\"}"}', 1),
    (b'"[[[[\\u005C"', 0),  # \u005C is a backslash, but does not escape the quote after it
])
def test_escapes_are_resolved_as_a_json_lexer_does(raw, depth):
    assert json_shape(raw).depth == depth
    json.loads(raw)  # each is valid JSON


def _refused(raw: bytes, limits: JsonLimits) -> FeedbackRejected:
    with pytest.raises(FeedbackRejected) as info:
        parse_json(raw, limits)
    return info.value


@pytest.mark.parametrize("raw, status, words", [
    (b"[" * 40 + b"]" * 40, 400, "deeper than 32"),
    (b"[" * 100_000, 400, "deeper than 32"),  # unclosed: the parser would recurse as deep before failing
    (b"[" + b"[]," * 2000 + b"[]]", 400, "more than 1024 arrays and objects"),
    (b"[[]]]]", 400, "do not balance"),
    (b"{" + b",".join(b'"k%d":0' % i for i in range(300)) + b"}", 400, "more than 256 object keys"),
    (b"[" + b"0," * 5000 + b"0]", 400, "more than 4096 array elements"),
    (b"[" + b"9" * 101 + b"]", 400, "a number of 101 characters"),
    (b"[" + b"9" * 5000 + b"]", 400, "a number of 5000 characters"),
    (b"[0." + b"1" * 200 + b"]", 400, "a number of 202 characters"),
    (b"[1e" + b"9" * 200 + b"]", 400, "characters"),
    (b"[NaN]", 400, "NaN is not a JSON number"),
    (b'{"a": "\\ud800"}', 422, "body['a'] is not valid Unicode"),
    (b'[1, {"\\udfff": 1}]', 422, "a key of body[1]"),
    (b'"\xff"', 400, "not UTF-8"),
    (b'{"a": 1', 400, "not JSON"),
])
def test_each_limit_is_refused_with_its_reason(raw, status, words):
    refused = _refused(raw, JsonLimits(bytes=1 << 20))
    assert refused.status == status and words in refused.detail, refused.detail


def test_what_fits_is_parsed():
    limits = JsonLimits(bytes=1 << 20)
    assert parse_json(b'{"text": "a\\ud83d\\ude00b", "n": [1, 2.5, -3e-7]}', limits) == \
        {"text": "a\U0001F600b", "n": [1, 2.5, -3e-7]}
    assert parse_json(b"[" * 32 + b"]" * 32, limits) is not None
    assert parse_json(b'["' + b"[" * 5000 + b'"]', limits) == ["[" * 5000]  # brackets in a string are text
    assert parse_json(b"[" + b"9" * 100 + b"]", limits) == [int("9" * 100)]


def test_the_walk_for_lone_surrogates_needs_no_stack():
    deep: list = ["\ud800"]
    for _ in range(100_000):
        deep = [deep]
    assert invalid_unicode(deep).startswith("body[0][0]")
    assert invalid_unicode({"a": [1, "ok", {"b": "x"}]}) is None


_FEEDBACK_HOSTILE = {  # each at the feedback route's limit
    "escaped quotes": b'{"event_id": "' + b'\\"' * (FEEDBACK_LIMITS.bytes // 2 - 10),
    "bare escaped quotes": b'\\"' * (FEEDBACK_LIMITS.bytes // 2),
    "deep": b"[" * FEEDBACK_LIMITS.bytes,
    "long number": b'{"reward": ' + b"9" * (FEEDBACK_LIMITS.bytes - 12) + b"}",
    "many keys": b"{" + b",".join(b'"%05d":0' % i for i in range(FEEDBACK_LIMITS.bytes // 10)) + b"}",
    "lone surrogates": b'{"event_id": "' + b"\\ud800" * (FEEDBACK_LIMITS.bytes // 6 - 4) + b'"}',
}


@pytest.mark.parametrize("shape", sorted(_FEEDBACK_HOSTILE))
def test_hostile_bodies_at_the_feedback_limit_are_refused_quickly(shape):
    raw = _FEEDBACK_HOSTILE[shape]
    assert len(raw) <= FEEDBACK_LIMITS.bytes
    start = time.perf_counter()
    with pytest.raises(FeedbackRejected) as info:
        parse_json(raw, FEEDBACK_LIMITS)
    assert 400 <= info.value.status < 500
    # a generous bound: linear work on 64 KiB takes milliseconds, a quadratic pass seconds
    assert time.perf_counter() - start < 1.0


def test_read_json_parses_a_large_body_off_the_event_loop():
    class Streamed:
        def __init__(self, raw: bytes):
            self.raw, self.headers = raw, {"content-length": str(len(raw))}

        async def stream(self):
            for i in range(0, len(self.raw), 65536):
                yield self.raw[i:i + 65536]

    big = json.dumps({"text": "x" * (1 << 20)}).encode()
    assert asyncio.run(read_json(Streamed(big), JsonLimits(bytes=2 << 20))) == {"text": "x" * (1 << 20)}
    with pytest.raises(FeedbackRejected) as info:
        asyncio.run(read_json(Streamed(big), JsonLimits(bytes=1 << 20)))
    assert info.value.status == 413
