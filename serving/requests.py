"""Request validation for the serving apps: plain functions, the same rules for HTTP and gRPC.

Each raises `FeedbackRejected(status, reason)`: a 4xx with a one-line reason for that request alone.
A JSON body is read through `serving.body.read_json` with its route's limits (`predict_limits`,
FEEDBACK_LIMITS): size (413) before parsing, then depth, counts, number lengths and Unicode, each
checked in time linear in the body; the fields are checked here. A gRPC message goes through
the same field checks (`grpc_inputs`, `parse_feedback`).
"""

from __future__ import annotations

from typing import Any

from core.data.inputs import TextInput, is_pair
from serving.body import JsonLimits, parse_json, read_body, read_json, short, valid_unicode
from serving.grpc_messages import Undecodable
from serving.join import MAX_EVENT_ID_CHARS, FeedbackRejected

__all__ = ["FEEDBACK_LIMITS", "MAX_TEXTS", "check_inputs_fit", "check_pairs", "check_texts", "grpc_feedback",
           "grpc_inputs", "max_body_bytes", "parse_feedback", "parse_json", "parse_predict", "predict_limits",
           "read_body", "read_json"]

MAX_TEXTS = 256  # per request: bounds one request's share of a batch
FEEDBACK_BODY_BYTES = 64 * 1024  # a feedback body is an event id, a label and a reward
FEEDBACK_LIMITS = JsonLimits(bytes=FEEDBACK_BODY_BYTES, values=64, keys=64, containers=16)
PREDICT_FIELDS = ("text", "text_pair", "texts", "pairs")


def max_body_bytes(max_text_chars: int, max_texts: int = MAX_TEXTS) -> int:
    """A predict body's size limit: the most pairs of the most characters, each escaped as \\uXXXX."""
    return 64 * 1024 + 2 * max_texts * max_text_chars * 6


def predict_limits(max_text_chars: int, max_texts: int = MAX_TEXTS) -> JsonLimits:
    """A predict body holds at most `max_texts` pairs: two strings and a list each, in one object."""
    return JsonLimits(bytes=max_body_bytes(max_text_chars, max_texts), values=4 * max_texts + 64, keys=64,
                      containers=max_texts + 16)


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
    body = json_object(body, PREDICT_FIELDS)
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
    """A gRPC PredictRequest's inputs: `texts`, paired index by index with `text_pairs` when it is given.
    The counts are checked before any text is copied out of the message."""
    _decoded(request)
    if len(request.texts) > max_texts or len(request.text_pairs) > max_texts:
        raise FeedbackRejected(422, f"'texts' must be a list of 1..{max_texts} strings")
    texts, seconds = list(request.texts), list(request.text_pairs)
    if not seconds:
        return check_texts(texts, max_text_chars, max_texts)
    if len(seconds) != len(texts):
        raise FeedbackRejected(422, f"'text_pairs' has {len(seconds)} texts for {len(texts)} 'texts'; "
                                    "give one second text per text")
    return check_pairs([[a, b] for a, b in zip(texts, seconds)], max_text_chars, max_texts)


def grpc_feedback(request: Any) -> tuple[str, int | str | None, float | None]:
    """A gRPC FeedbackRequest through the same checks as an HTTP feedback body (parse_feedback)."""
    _decoded(request)
    label = request.label if request.HasField("label") else None
    reward = request.reward if request.HasField("reward") else None
    return parse_feedback({"event_id": request.event_id, "label": label, "reward": reward})


def _decoded(request: Any) -> None:
    if isinstance(request, Undecodable):  # the proxy could not decode it (serving/grpc_messages.py)
        raise FeedbackRejected(400, f"the message is not a valid {request.message}: {request.reason}")


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
    body = json_object(body, ("event_id", "label", "reward"))
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


def json_object(body: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """`body` when it is a JSON object with no field beyond `fields`; else a 422 naming them."""
    if not isinstance(body, dict):
        raise FeedbackRejected(422, f"body must be a JSON object with {', '.join(map(repr, fields))}")
    extra = sorted(set(body) - set(fields))
    if extra:
        raise FeedbackRejected(422, f"unknown field {short(extra[0])}; expected {', '.join(map(repr, fields))}")
    return body
