"""Parse time of hostile JSON bodies at each body route's size limit: serving/body.py against the
regex-based parser it replaced (the anchor, copied below), side by side with their ratio.

    .venv/bin/python benchmarks/parse_bodies.py [--repeats 5] [--anchor-timeout 30] [--routes feedback,act,predict]

Each shape fills the route's limit: a run of escaped quotes (closed and unclosed), deep nesting,
long numbers (one long integer, many integers of 4,300 digits, one long float), many keys,
lone surrogates, many values, many empty containers, and the largest valid body for scale. A
time is the best of `--repeats` runs of the whole parse (checks, json.loads, the Unicode walk),
refused or not; the anchor runs in a child process killed after `--anchor-timeout` seconds, and
a killed run's time is estimated from the same shape at 1/16 and 1/8 of the size (the exponent
fitted on those two) and printed as `~`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.q import spec_for_env  # noqa: E402
from serving.body import JsonLimits, parse_json  # noqa: E402
from serving.join_rules import FeedbackRejected  # noqa: E402
from serving.policy_server import act_limits  # noqa: E402
from serving.requests import FEEDBACK_LIMITS, MAX_TEXTS, predict_limits  # noqa: E402

MAX_TEXT_CHARS = 2000  # feedback.max_text_chars' default

# ---- the anchor: serving/requests.py's parser before serving/body.py ------------------------
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def anchor_parse(raw: bytes, max_depth: int = 32) -> Any:
    text = raw.decode("utf-8")
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if brackets:
        steps = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
        if int(np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)).max()) > max_depth:
            raise ValueError("too deep")
    body = json.loads(text)
    if _SURROGATE_ESCAPE.search(text):
        _anchor_walk(body)
    return body


def _anchor_walk(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _anchor_walk(item)
    elif isinstance(value, list):
        for item in value:
            _anchor_walk(item)


# ---- shapes ------------------------------------------------------------------------------------
def _fill(head: bytes, unit: bytes, tail: bytes, size: int) -> bytes:
    return head + unit * max(0, (size - len(head) - len(tail)) // len(unit)) + tail


def _joined(head: bytes, items: Callable[[int], bytes], tail: bytes, size: int) -> bytes:
    parts, used, i = [], len(head) + len(tail), 0
    while True:
        item = items(i)
        if used + len(item) + 1 > size:
            break
        parts.append(item)
        used += len(item) + 1
        i += 1
    return head + b",".join(parts) + tail


def shapes(size: int, valid: bytes) -> dict[str, bytes]:
    return {
        "quotes, unclosed": _fill(b'{"text": "', b'\\"', b"", size),
        "quotes, closed": _fill(b'{"text": "', b'\\"', b'"}', size),
        "quotes, bare run": _fill(b"", b'\\"', b"", size),
        "deep nesting": _fill(b"", b"[", b"", size),
        "one long integer": _fill(b'{"reward": ', b"9", b"}", size),
        "integers of 4300 digits": _joined(b"[", lambda i: b"9" * 4300, b"]", size),
        "one long float": _fill(b'{"reward": 0.', b"1", b"}", size),
        "many keys": _joined(b"{", lambda i: b'"k%d":0' % i, b"}", size),
        "lone surrogates": _fill(b'{"text": "', b"\\ud800", b'"}', size),
        "many values": _fill(b"[", b"0,", b"0]", size),
        "many empty arrays": _fill(b"[", b"[],", b"[]]", size),
        "largest valid body": valid,
    }


def routes() -> dict[str, tuple[JsonLimits, bytes]]:
    spec = spec_for_env("CartPole-v1", "dqn", [64])
    text = json.dumps("好" * MAX_TEXT_CHARS)  # each character escaped as \uXXXX
    predict = b'{"pairs": [' + b",".join([f"[{text}, {text}]".encode()] * MAX_TEXTS) + b"]}"
    row = "[" + ", ".join(["-0.12345678901234567"] * spec.obs_dim) + "]"
    act = json.dumps({"obs": json.loads("[" + ",".join([row] * 1024) + "]"),
                      "clients": [f"client-{i:08d}" for i in range(1024)]}).encode()
    feedback = json.dumps({"event_id": "e" * 64, "label": "pos", "reward": 0.5}).encode()
    return {"feedback": (FEEDBACK_LIMITS, feedback), "act": (act_limits(spec), act),
            "predict": (predict_limits(MAX_TEXT_CHARS), predict)}


# ---- timing ------------------------------------------------------------------------------------
def _once(parse: Callable[[bytes], Any], raw: bytes) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        parse(raw)
        outcome = "parsed"
    except FeedbackRejected as exc:
        outcome = f"{exc.status}"
    except (ValueError, RecursionError) as exc:
        outcome = type(exc).__name__
    return time.perf_counter() - start, outcome


def best_of(parse: Callable[[bytes], Any], raw: bytes, repeats: int, budget_s: float = 2.0) -> tuple[float, str]:
    """The fastest of `repeats` runs (fewer once `budget_s` is spent) and the first run's outcome."""
    runs, spent = [], 0.0
    while len(runs) < repeats and (not runs or spent < budget_s):
        runs.append(_once(parse, raw))
        spent += runs[-1][0]
    return min(t for t, _ in runs), runs[0][1]


def _child(raw: bytes, repeats: int, out: Any) -> None:
    out.put(best_of(anchor_parse, raw, repeats))


def anchor_time(raw: bytes, repeats: int, timeout_s: float) -> tuple[float, bool]:
    """(seconds, estimated?): measured in a child process; past the timeout, extrapolated from the
    same shape's first 16 and 32 KiB with the exponent fitted on those two."""
    measured = _anchor_capped(raw, repeats, timeout_s)
    if measured is not None:
        return measured, False
    t1, t2 = (_anchor_capped(raw[:size], 1, timeout_s) for size in (16 * 1024, 32 * 1024))
    if t1 is None or t2 is None:
        return math.inf, True
    exponent = math.log(max(t2, 1e-9) / max(t1, 1e-9)) / math.log(2)
    return t2 * (len(raw) / (32 * 1024)) ** exponent, True


def _anchor_capped(raw: bytes, repeats: int, timeout_s: float) -> float | None:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(raw, repeats, out))
    child.start()
    child.join(timeout_s)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return out.get()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--anchor-timeout", type=float, default=30.0)
    parser.add_argument("--routes", default="feedback,act,predict")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    args = parser.parse_args()
    print(f"{'route':9s} {'limit':>9s}  {'shape':24s} {'new ms':>8s} {'outcome':>7s} {'anchor ms':>11s} {'ratio':>9s}")
    rows = []
    for route, (limits, valid) in routes().items():
        if route not in args.routes.split(","):
            continue
        for shape, raw in shapes(limits.bytes, valid).items():
            assert len(raw) <= limits.bytes, (route, shape, len(raw))
            new, outcome = best_of(lambda r: parse_json(r, limits), raw, args.repeats)
            old, estimated = anchor_time(raw, args.repeats, args.anchor_timeout)
            rows.append({"route": route, "limit": limits.bytes, "shape": shape, "ours_ms": round(new * 1000, 2),
                         "outcome": outcome, "anchor_ms": round(old * 1000, 1) if math.isfinite(old) else None,
                         "anchor_estimated": estimated, "ratio": round(old / new, 1) if math.isfinite(old) else None})
            said = f"{'~' if estimated else ''}{old * 1000:.1f}"
            print(f"{route:9s} {limits.bytes:9d}  {shape:24s} {new * 1000:8.1f} {outcome:>7s} {said:>11s} "
                  f"{old / new:9.1f}", flush=True)
    worst = max(rows, key=lambda r: r["ours_ms"])
    print(f"worst parse time (ours): {worst['ours_ms']:.1f} ms ({worst['route']}, {worst['shape']})")
    if args.json:
        print(json.dumps({"rows": rows, "worst_ours_ms": worst["ours_ms"]}))


if __name__ == "__main__":
    main()
