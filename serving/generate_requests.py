"""Request validation for the generator app (serving/generate_app.py): the same rules for HTTP and gRPC.

Each refusal is a `FeedbackRejected(status, reason)` whose reason names the field: a 4xx for that
request alone.  Bodies are read by `serving.body.read_json` with GENERATE_LIMITS / FEEDBACK_LIMITS
first (size, depth, counts, long numbers, lone surrogates), then checked here.

    {"prompt": str, "max_new_tokens"?: int, "temperature"?: number, "top_p"?: number, "n"?: int}
    {"event_id": str, "thumbs": "up" | "down"} | {"event_id", "reward": number in [0, 1]}
        | {"event_id", "better_than": another event id of the same prompt}
"""

from __future__ import annotations

import math
from typing import Any

from core.config.generate import GenerateServingSection
from core.models.generator import MIN_TEMPERATURE, Sampling
from serving.body import JsonLimits, short, valid_unicode
from serving.completion_join import THUMBS
from serving.grpc_messages import Undecodable
from serving.join import MAX_EVENT_ID_CHARS, FeedbackRejected
from serving.requests import json_object

GENERATE_FIELDS = ("prompt", "max_new_tokens", "temperature", "top_p", "n")
COMPLETION_FEEDBACK_FIELDS = ("event_id", "thumbs", "reward", "better_than")
COMPLETION_FEEDBACK_LIMITS = JsonLimits(bytes=64 * 1024, values=64, keys=64, containers=16)


def generate_limits(limits: GenerateServingSection) -> JsonLimits:
    """A generate body: one object of five fields, its prompt escaped as \\uXXXX at worst."""
    return JsonLimits(bytes=16 * 1024 + 6 * limits.max_prompt_chars, values=64, keys=64, containers=16)


def parse_generate(body: Any, limits: GenerateServingSection) -> tuple[str, Sampling]:
    """(prompt, sampling) from a generate body; the defaults fill what it leaves out."""
    body = json_object(body, GENERATE_FIELDS)
    if "prompt" not in body:
        raise FeedbackRejected(422, "'prompt' is required: the text to continue")
    prompt = check_prompt(body["prompt"], limits.max_prompt_chars)
    max_new = _integer(body, "max_new_tokens", limits.default_max_new_tokens, limits.max_new_tokens_limit)
    n = _integer(body, "n", 1, limits.max_n)
    temperature = _number(body, "temperature", limits.default_temperature, 0.0, limits.max_temperature,
                          f"a number in [0, {limits.max_temperature:g}] (0: greedy)")
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise FeedbackRejected(422, f"'temperature' must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, "
                                    f"got {short(temperature)}")
    top_p = _number(body, "top_p", limits.default_top_p, 0.0, 1.0, "a number in (0, 1]")
    if top_p <= 0.0:
        raise FeedbackRejected(422, f"'top_p' must be a number in (0, 1], got {short(top_p)}")
    return prompt, Sampling(max_new_tokens=max_new, temperature=temperature, top_p=top_p, n=n)


def check_prompt(prompt: Any, max_chars: int) -> str:
    if not isinstance(prompt, str):
        raise FeedbackRejected(422, f"'prompt' must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise FeedbackRejected(422, "'prompt' is empty")
    if not valid_unicode(prompt):
        raise FeedbackRejected(422, "'prompt' is not valid Unicode text (a lone surrogate)")
    if len(prompt) > max_chars:
        raise FeedbackRejected(413, f"'prompt' has {len(prompt)} characters; the limit is {max_chars}")
    return prompt


def check_fits(prompt_tokens: int, sampling: Sampling, context: int) -> None:
    """The prompt and the completion must fit the model's context (known once the prompt is encoded)."""
    if prompt_tokens + sampling.max_new_tokens > context:
        raise FeedbackRejected(422, f"'prompt' is {prompt_tokens} tokens and 'max_new_tokens' asks for "
                                    f"{sampling.max_new_tokens} more: the model reads at most {context}")


def parse_completion_feedback(body: Any) -> tuple[str, int | None, float | None, str | None]:
    """(event_id, thumbs label index, reward, better_than): exactly one kind of feedback."""
    body = json_object(body, COMPLETION_FEEDBACK_FIELDS)
    event_id = body.get("event_id")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID_CHARS:
        raise FeedbackRejected(422, f"'event_id' must be a string of 1..{MAX_EVENT_ID_CHARS} characters")
    given = [k for k in COMPLETION_FEEDBACK_FIELDS[1:] if body.get(k) is not None]
    if len(given) != 1:
        raise FeedbackRejected(422, "give exactly one of 'thumbs' (\"up\" or \"down\"), 'reward' (a number in "
                                    "[0, 1]) or 'better_than' (the event id of a worse completion of the same "
                                    "prompt)" + (f"; got {', '.join(map(repr, given))}" if given else ""))
    thumbs, reward, better = body.get("thumbs"), body.get("reward"), body.get("better_than")
    if thumbs is not None and thumbs not in THUMBS:
        raise FeedbackRejected(422, f"'thumbs' must be \"up\" or \"down\", got {short(thumbs)}")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))
                               or not math.isfinite(reward) or not 0 <= reward <= 1):
        raise FeedbackRejected(422, f"'reward' must be a number in [0, 1], got {short(reward)}")
    if better is not None and (not isinstance(better, str) or not 1 <= len(better) <= MAX_EVENT_ID_CHARS):
        raise FeedbackRejected(422, f"'better_than' must be an event id of 1..{MAX_EVENT_ID_CHARS} characters, "
                                    f"got {short(better)}")
    if better == event_id:
        raise FeedbackRejected(422, "'better_than' names the completion itself; name another completion of the "
                                    "same prompt")
    label = None if thumbs is None else THUMBS.index(thumbs)
    return event_id, label, None if reward is None else float(reward), better


def grpc_generate(request: Any, limits: GenerateServingSection) -> tuple[str, Sampling]:
    """A gRPC GenerateRequest through the same checks (an unset optional takes its default)."""
    _decoded(request)
    body: dict[str, Any] = {"prompt": request.prompt}
    for name in GENERATE_FIELDS[1:]:
        if request.HasField(name):
            body[name] = getattr(request, name)
    return parse_generate(body, limits)


def grpc_completion_feedback(request: Any) -> tuple[str, int | None, float | None, str | None]:
    _decoded(request)
    body = {"event_id": request.event_id}
    for name in COMPLETION_FEEDBACK_FIELDS[1:]:
        if request.HasField(name):
            body[name] = getattr(request, name)
    return parse_completion_feedback(body)


def _decoded(request: Any) -> None:
    if isinstance(request, Undecodable):  # the proxy could not decode it (serving/grpc_messages.py)
        raise FeedbackRejected(400, f"the message is not a valid {request.message}: {request.reason}")


def _integer(body: dict, name: str, default: int, limit: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise FeedbackRejected(422, f"'{name}' must be an integer in 1..{limit}, got {short(value)}")
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, what: str) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise FeedbackRejected(422, f"'{name}' must be {what}, got {short(value)}")
    return float(value)

