"""Request validation for the feedback app: plain functions, the same rules for HTTP and gRPC.

Each raises `FeedbackRejected(status, reason)`: a 4xx with a one-line reason for that request alone.
"""

from __future__ import annotations

import json
from typing import Any

from serving.join import MAX_EVENT_ID_CHARS, FeedbackRejected

MAX_TEXTS = 256  # per request: bounds one request's share of a batch


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FeedbackRejected(400, f"body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FeedbackRejected(400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def check_texts(texts: Any, max_text_chars: int, max_texts: int = MAX_TEXTS, single: bool = False) -> list[str]:
    if not isinstance(texts, list) or not 1 <= len(texts) <= max_texts:
        raise FeedbackRejected(422, f"'texts' must be a list of 1..{max_texts} strings")
    for i, text in enumerate(texts):
        where = "'text'" if single else f"texts[{i}]"
        if not isinstance(text, str):
            raise FeedbackRejected(422, f"{where} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise FeedbackRejected(422, f"{where} is empty")
        if len(text) > max_text_chars:
            raise FeedbackRejected(413, f"{where} has {len(text)} characters; the limit is {max_text_chars}")
    return texts


def parse_predict(body: Any, max_text_chars: int, max_texts: int = MAX_TEXTS) -> tuple[list[str], bool]:
    """(texts, single) from a predict body; raises FeedbackRejected with the status and reason."""
    body = _object(body, ("text", "texts"))
    if ("text" in body) == ("texts" in body):
        raise FeedbackRejected(422, "give either 'text' (a string) or 'texts' (a list of strings)")
    if "text" in body:
        return check_texts([body["text"]], max_text_chars, max_texts, single=True), True
    return check_texts(body["texts"], max_text_chars, max_texts), False


def parse_feedback(body: Any) -> tuple[str, int | str | None, float | None]:
    """(event_id, label, reward); label membership is the joiner's check (it knows the event's labels)."""
    body = _object(body, ("event_id", "label", "reward"))
    event_id, label, reward = body.get("event_id"), body.get("label"), body.get("reward")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID_CHARS:
        raise FeedbackRejected(422, f"'event_id' must be a string of 1..{MAX_EVENT_ID_CHARS} characters")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        raise FeedbackRejected(422, f"'label' must be a label name or index, got {label!r}")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
        raise FeedbackRejected(422, f"'reward' must be a number in [0, 1], got {reward!r}")
    if label is None and reward is None:
        raise FeedbackRejected(422, "feedback needs a 'label' or a 'reward'")
    return event_id, label, reward  # the reward's range: checked by the join (one rule for both APIs)


def _object(body: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FeedbackRejected(422, f"body must be a JSON object with {', '.join(map(repr, fields))}")
    extra = sorted(set(body) - set(fields))
    if extra:
        raise FeedbackRejected(422, f"unknown field {extra[0]!r}; expected {', '.join(map(repr, fields))}")
    return body
