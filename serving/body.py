"""A request's JSON body, read and parsed in time linear in its size whatever its shape.

    read_json(request, limits)   the one entry point of every route that takes a JSON body:
        read_body                size first (413), by Content-Length before any byte is read
        json_shape               one vectorised pass over the bytes: nesting depth, values, object
                                 keys and containers outside strings, escapes resolved (400 past a limit)
        json.loads               the C parser, on a body whose shape is now bounded: its recursion
                                 cannot go deeper than `limits.depth`, and a number longer than
                                 MAX_NUMBER_CHARS is refused before it is converted
        invalid_unicode          an iterative walk, only when the text holds a surrogate escape (422)

Counting before parsing is what keeps the cost linear: the C parser's own cost grows with what
it builds (each key, each container the garbage collector then tracks, each digit of a long
integer), so a body of a few megabytes made of nothing but those would hold the replica; a
route's limits follow what its valid bodies hold. A body past OFF_LOOP_BYTES is parsed on a
worker thread, so the replica's event loop keeps answering other requests meanwhile.

Each refusal is a `FeedbackRejected(status, reason)`: a 4xx with a one-line reason for that request alone.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.join_rules import FeedbackRejected

MAX_JSON_DEPTH = 32  # nesting of arrays and objects; every valid body here nests 3 deep at most
MAX_NUMBER_CHARS = 100  # a number literal's characters: a float written out in full needs 25
MAX_REASON_VALUE = 60  # characters of a client's value quoted in a reason
OFF_LOOP_BYTES = 256 * 1024  # bodies at least this large are parsed off the event loop
DEPTH_PROBE_BYTES = 1 << 16  # of a body refused for its counts, where its depth is looked for

_QUOTE = ord('"')
_WORD = np.dtype("<u8")  # 64 flags, the first in the lowest bit (np.packbits' "little" order)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way a lone surrogate gets into a JSON text


@dataclass(frozen=True)
class JsonLimits:
    """What one route's body may hold; every count is of structure outside strings."""

    bytes: int
    depth: int = MAX_JSON_DEPTH
    values: int = 4096  # array elements and object members, all containers together
    keys: int = 256  # object members (each a key the parser hashes)
    containers: int = 1024  # arrays and objects (each tracked by the garbage collector)


@dataclass(frozen=True)
class JsonShape:
    depth: int
    values: int
    keys: int
    containers: int
    balanced: bool = True  # as many closing brackets as opening ones (always so in valid JSON)


async def read_json(request: Any, limits: JsonLimits) -> Any:
    """A Starlette request's body as JSON, within `limits`; FeedbackRejected (400 / 413 / 422) with the reason."""
    raw = await read_body(request, limits.bytes)
    if len(raw) >= OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, raw, limits)
    return parse_json(raw, limits)


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


def parse_json(raw: bytes, limits: JsonLimits | None = None) -> Any:
    """`raw` parsed as JSON within `limits` (the size is the caller's: read_body checked it)."""
    limits = limits or JsonLimits(bytes=len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedbackRejected(400, f"body is not UTF-8 (byte {exc.start})") from None
    check_shape(json_shape(raw, limits.depth, limits.containers), limits)
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_bounded_float)
    except json.JSONDecodeError as exc:
        raise FeedbackRejected(400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except NotANumber as exc:  # NaN/Infinity: parsed again to name the field that holds it
        raise FeedbackRejected(400, f"{constant_at(text)}: {exc} (body is not JSON)") from None
    except (ValueError, RecursionError) as exc:  # a number too long
        raise FeedbackRejected(400, f"body is not JSON: {short(str(exc))}") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then walk the values (a surrogate pair is fine)
        where = invalid_unicode(body)
        if where is not None:
            raise FeedbackRejected(422, f"{where} is not valid Unicode text (a lone surrogate)")
    return body


def check_shape(shape: JsonShape, limits: JsonLimits) -> None:
    if shape.depth > limits.depth:
        raise FeedbackRejected(400, f"body nests arrays/objects deeper than {limits.depth} levels")
    if shape.containers > limits.containers:
        raise FeedbackRejected(400, f"body holds more than {limits.containers} arrays and objects")
    if not shape.balanced:
        raise FeedbackRejected(400, "body is not JSON: its brackets do not balance")
    if shape.keys > limits.keys:
        raise FeedbackRejected(400, f"body holds more than {limits.keys} object keys")
    if shape.values > limits.values:
        raise FeedbackRejected(400, f"body holds more than {limits.values} array elements and object members")


def json_shape(raw: bytes, max_depth: int = MAX_JSON_DEPTH, max_containers: int | None = None) -> JsonShape:
    """The structure of a JSON text outside its strings, in a few vectorised passes over its bytes.

    Escapes first: `bytes.replace` pairs a backslash with the byte after it left to right without
    overlap, as a JSON lexer does, so replacing `\\\\` and then `\\"` by two neutral bytes leaves
    only the quotes that open or close strings (offsets unchanged). A byte is then inside a string
    when an odd number of those quotes precede it. This holds on any prefix of valid JSON, which
    is all a parser reads before it stops on an error, so the counts bound the parser's work on
    any text. Every byte of `[]{},:"\\` is that character in UTF-8 (a multi-byte sequence uses only
    bytes >= 0x80).

    The depth is measured until it passes `max_depth`; over the whole text when its brackets
    balance and number at most `max_containers`, else (the body is refused either way) over its
    first DEPTH_PROBE_BYTES outside strings only, to say which limit it passes first.
    """
    plain = raw.replace(b"\\\\", b"__").replace(b'\\"', b"__") if b"\\" in raw else raw
    data = np.frombuffer(plain, dtype=np.uint8)
    quotes = data == _QUOTE
    if quotes.any():
        data = data[~_odd_prefix(quotes)]  # the bytes outside strings
    opens, closes = (data == ord("[")) | (data == ord("{")), (data == ord("]")) | (data == ord("}"))
    containers, ends = int(np.count_nonzero(opens)), int(np.count_nonzero(closes))
    if containers != ends or containers > (containers if max_containers is None else max_containers):
        opens, closes = opens[:DEPTH_PROBE_BYTES], closes[:DEPTH_PROBE_BYTES]
    steps = opens[opens | closes].view(np.int8) * 2 - 1  # +1 per open, -1 per close, in order
    return JsonShape(depth=_max_depth(steps, max_depth), keys=int(np.count_nonzero(data == ord(":"))),
                     values=int(np.count_nonzero(data == ord(","))) + containers + 1, containers=containers,
                     balanced=containers == ends)


def _odd_prefix(flags: np.ndarray) -> np.ndarray:
    """Per position: is the number of True flags up to and including it odd? A prefix XOR on the
    flags packed 64 to a word: within a word by shifts, across words by one short accumulate."""
    bits = np.packbits(flags, bitorder="little")
    words = np.zeros(-(-bits.size // 8), dtype=_WORD)
    words.view(np.uint8)[:bits.size] = bits
    for shift in (1, 2, 4, 8, 16, 32):
        words ^= words << np.uint64(shift)
    odd = np.bitwise_xor.accumulate(words >> np.uint64(63))  # a word's top bit: the parity of all its flags
    np.invert(words[1:], out=words[1:], where=odd[:-1].astype(bool))
    return np.unpackbits(words.view(np.uint8), count=flags.size, bitorder="little").view(bool)


def _max_depth(steps: np.ndarray, stop_past: int, chunk: int = 1 << 16) -> int:
    """The running sum's maximum, chunk by chunk, stopping once it passes `stop_past`."""
    deepest = level = 0
    for start in range(0, steps.size, chunk):
        levels = steps[start:start + chunk].cumsum(dtype=np.int32) + level
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
        if deepest > stop_past:
            break
    return deepest


def invalid_unicode(value: Any, where: str = "body") -> str | None:
    """Where a string of a parsed body cannot be encoded as UTF-8 (a lone surrogate), else None.
    Iterative: a body's depth never costs stack; a path is spelled out only for the string found."""
    stack: list[tuple[Any, tuple]] = [(value, (where,))]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not valid_unicode(item):
                return _spelled(path)
        elif isinstance(item, dict):
            for key in item:
                if not valid_unicode(key):
                    return f"a key of {_spelled(path)}"
            stack.extend((v, (path, short(k))) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((item[i], (path, i)) for i in range(len(item) - 1, -1, -1))
    return None


def _spelled(path: tuple) -> str:
    """(("body",), 'texts'), 3) -> "body['texts'][3]"."""
    parts = []
    while len(path) == 2:
        path, key = path
        parts.append(f"[{key}]")
    return path[0] + "".join(reversed(parts))


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


class NotANumber(ValueError):
    """NaN, Infinity or -Infinity in a body: Python's parser takes them, JSON has no such numbers."""


def _no_constant(name: str) -> Any:
    raise NotANumber(f"{name} is not a JSON number")


class _Constant:
    pass


def constant_at(text: str) -> str:
    """Where the first NaN / Infinity of a body is (the body's shape is already bounded)."""
    stack: list[tuple[Any, tuple]] = [(json.loads(text, parse_constant=lambda _: _Constant()), ("body",))]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Constant):
            return _spelled(path)
        if isinstance(item, dict):
            stack.extend((v, (path, short(k))) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((item[i], (path, i)) for i in range(len(item) - 1, -1, -1))
    return "body"


def _bounded_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(literal)} characters; the limit is {MAX_NUMBER_CHARS}")
    return int(literal)


def _bounded_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(literal)} characters; the limit is {MAX_NUMBER_CHARS}")
    return float(literal)
