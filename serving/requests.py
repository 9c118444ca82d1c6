"""Request validation for the serving apps: plain functions, the same rules for HTTP and gRPC.

Each raises `FeedbackRejected(status, reason)`: a 4xx with a one-line reason for that request alone.
A body is read with a size limit (413) before it is parsed; its nesting depth is measured on the
raw text before `json.loads` (which would raise RecursionError, a 500); text that is not valid
Unicode (a lone surrogate, legal as a JSON escape) is refused before any of it reaches a batch,
the tokenizer, Arrow or an answer's JSON encoder, each of which would fail on it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from core.text_inputs import TextInput, is_pair
from serving.join import MAX_EVENT_ID_CHARS, FeedbackRejected

MAX_TEXTS = 256  # per request: bounds one request's share of a batch
MAX_JSON_DEPTH = 32  # nesting of arrays and objects; every valid body here nests 3 deep at most
FEEDBACK_BODY_BYTES = 64 * 1024  # a feedback body is an event id, a label and a reward
MAX_REASON_VALUE = 60  # characters of a client's value quoted in a reason
PREDICT_FIELDS = ("text", "text_pair", "texts", "pairs")

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string literal (unrolled: no backtracking)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way a lone surrogate gets into a JSON text


def max_body_bytes(max_text_chars: int, max_texts: int = MAX_TEXTS) -> int:
    """A predict body's size limit: the most pairs of the most characters, each escaped as \\uXXXX."""
    return 64 * 1024 + 2 * max_texts * max_text_chars * 6


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The body of a Starlette request, refused (413) past `max_bytes`: by its Content-Length before
    reading any of it, else (chunked, or a length that lies) as soon as the streamed bytes pass it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise FeedbackRejected(400, f"Content-Length {short(declared)} is not a number of bytes")
        if int(declared) > max_bytes:
            raise FeedbackRejected(413, f"body has {int(declared)} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise FeedbackRejected(413, f"body has more than {max_bytes} bytes; the limit is {max_bytes}")
        chunks.append(chunk)
    return b"".join(chunks)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text, brackets inside strings not counted.
    Linear, in C-speed passes: no recursion, whatever the input."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    return int(np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)).max())


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedbackRejected(400, f"body is not UTF-8 (byte {exc.start})") from None
    if json_depth(text) > max_depth:
        raise FeedbackRejected(400, f"body nests arrays/objects deeper than {max_depth} levels")
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise FeedbackRejected(400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, an integer of > 4300 digits
        raise FeedbackRejected(400, f"body is not JSON: {short(str(exc))}") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then walk the values (a surrogate pair is fine)
        where = invalid_unicode(body)
        if where is not None:
            raise FeedbackRejected(422, f"{where} is not valid Unicode text (a lone surrogate)")
    return body


def invalid_unicode(value: Any, where: str = "body") -> str | None:
    """Where a string of a parsed body cannot be encoded as UTF-8 (a lone surrogate), else None."""
    if isinstance(value, str):
        return None if valid_unicode(value) else where
    if isinstance(value, dict):
        for key, item in value.items():
            if not valid_unicode(key):
                return f"a key of {where}"
            found = invalid_unicode(item, f"{where}[{short(key)}]")
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = invalid_unicode(item, f"{where}[{i}]")
            if found:
                return found
    return None


def valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def short(value: Any, limit: int = MAX_REASON_VALUE) -> str:
    """A client's value quoted in a one-line reason: repr (escapes newlines), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_texts(texts: Any, max_text_chars: int, max_texts: int = MAX_TEXTS, single: bool = False,
                name: str = "'text'") -> list[str]:
    if not isinstance(texts, list) or not 1 <= len(texts) <= max_texts:
        raise FeedbackRejected(422, f"'texts' must be a list of 1..{max_texts} strings")
    for i, text in enumerate(texts):
        where = name if single else f"texts[{i}]"  # `name`: how a reason names a lone text
        if not isinstance(text, str):
            raise FeedbackRejected(422, f"{where} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise FeedbackRejected(422, f"{where} is empty")
        if not valid_unicode(text):  # checked before batching: it would fail every request in the batch
            raise FeedbackRejected(422, f"{where} is not valid Unicode text (a lone surrogate)")
        if len(text) > max_text_chars:
            raise FeedbackRejected(413, f"{where} has {len(text)} characters; the limit is {max_text_chars}")
    return texts


def parse_predict(body: Any, max_text_chars: int, max_texts: int = MAX_TEXTS) -> tuple[list[TextInput], bool]:
    """(model inputs, single) from a predict body; raises FeedbackRejected with the status and reason.

    {"text": a} | {"text": a, "text_pair": b} | {"texts": [a, ...]} | {"pairs": [[a, b], ...]};
    a pair's texts follow the rules of any text (check_texts), each side on its own.
    """
    body = _object(body, PREDICT_FIELDS)
    given = [k for k in ("text", "texts", "pairs") if k in body]
    if len(given) != 1:
        raise FeedbackRejected(422, "give either 'text' (a string, with 'text_pair' for a pair), 'texts' (a list "
                                    "of strings) or 'pairs' (a list of [text, text_pair])")
    if "text_pair" in body and given != ["text"]:
        raise FeedbackRejected(422, "'text_pair' goes with 'text'; send a batch of pairs as 'pairs'")
    if "pairs" in body:
        return check_pairs(body["pairs"], max_text_chars, max_texts), False
    if "text" in body:
        (text,) = check_texts([body["text"]], max_text_chars, max_texts, single=True)
        if "text_pair" not in body:
            return [text], True
        (second,) = check_texts([body["text_pair"]], max_text_chars, max_texts, single=True, name="'text_pair'")
        return [(text, second)], True
    return check_texts(body["texts"], max_text_chars, max_texts), False


def check_pairs(pairs: Any, max_text_chars: int, max_texts: int = MAX_TEXTS) -> list[TextInput]:
    if not isinstance(pairs, list) or not 1 <= len(pairs) <= max_texts:
        raise FeedbackRejected(422, f"'pairs' must be a list of 1..{max_texts} [text, text_pair] lists")
    out: list[TextInput] = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, list) or len(pair) != 2:
            raise FeedbackRejected(422, f"pairs[{i}] must be a list of two strings [text, text_pair], "
                                        f"got {short(pair)}")
        a, b = (check_texts([side], max_text_chars, max_texts, single=True, name=f"pairs[{i}][{k}]")[0]
                for k, side in enumerate(pair))
        out.append((a, b))
    return out


def grpc_inputs(request: Any, max_text_chars: int, max_texts: int = MAX_TEXTS) -> list[TextInput]:
    """A gRPC PredictRequest's inputs: `texts`, paired index by index with `text_pairs` when it is given."""
    texts, seconds = list(request.texts), list(request.text_pairs)
    if not seconds:
        return check_texts(texts, max_text_chars, max_texts)
    if len(seconds) != len(texts):
        raise FeedbackRejected(422, f"'text_pairs' has {len(seconds)} texts for {len(texts)} 'texts'; "
                                    "give one second text per text")
    return check_pairs([[a, b] for a, b in zip(texts, seconds)], max_text_chars, max_texts)


def check_inputs_fit(inputs: list[TextInput], model_pairs: bool) -> None:
    """A pair to a one-text model, or one text to a pair model: 422 saying what the model reads.

    Refused rather than read some other way: a one-text model never saw token type 1 or a
    second [SEP], so its answer on a pair (or a pair model's on half of one) is a confident
    guess, and its feedback row would teach the learner an input it is not built for."""
    if model_pairs and not all(is_pair(x) for x in inputs):
        raise FeedbackRejected(422, "this model classifies text pairs: send 'text' with 'text_pair', or 'pairs'")
    if not model_pairs and any(is_pair(x) for x in inputs):
        raise FeedbackRejected(422, "this model classifies single texts: send 'text' or 'texts', without pairs")


def parse_feedback(body: Any) -> tuple[str, int | str | None, float | None]:
    """(event_id, label, reward); label membership is the joiner's check (it knows the event's labels)."""
    body = _object(body, ("event_id", "label", "reward"))
    event_id, label, reward = body.get("event_id"), body.get("label"), body.get("reward")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID_CHARS:
        raise FeedbackRejected(422, f"'event_id' must be a string of 1..{MAX_EVENT_ID_CHARS} characters")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        raise FeedbackRejected(422, f"'label' must be a label name or index, got {short(label)}")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
        raise FeedbackRejected(422, f"'reward' must be a number in [0, 1], got {short(reward)}")
    if label is None and reward is None:
        raise FeedbackRejected(422, "feedback needs a 'label' or a 'reward'")
    return event_id, label, reward  # the reward's range: checked by the join (one rule for both APIs)


def _object(body: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FeedbackRejected(422, f"body must be a JSON object with {', '.join(map(repr, fields))}")
    extra = sorted(set(body) - set(fields))
    if extra:
        raise FeedbackRejected(422, f"unknown field {short(extra[0])}; expected {', '.join(map(repr, fields))}")
    return body
