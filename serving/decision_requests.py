"""Request validation for the decision app (serving/decision_app.py).

Each refusal is a `FeedbackRejected(status, reason)` whose reason names the field: a 4xx for that
request alone.  Bodies are read by `serving.body.read_json` within `rank_limits` / REWARD_LIMITS
first (size, depth, counts), then checked here; the features themselves by the policy
(core/decisions/features.py), whose FeatureError names the field too.

    rank    {"context": {namespace: {feature: number | string | [string]}},
             "actions": [{"id": str, "features"?: {namespace: {...}}}], "exclude"?: [id]}
    reward  {"event_id": str, "reward": number in the policy's declared range}
"""

from __future__ import annotations

from typing import Any

from core.config.decisions import DecisionServingSection
from core.decisions.features import FeatureError
from core.decisions.policy import DecisionPolicy, Request
from serving.body import JsonLimits
from serving.grpc_messages import Undecodable
from serving.join import MAX_EVENT_ID_CHARS, FeedbackRejected
from serving.join_rules import check_reward
from serving.requests import json_object

RANK_FIELDS = ("context", "actions", "exclude")
REWARD_FIELDS = ("event_id", "reward")
REWARD_LIMITS = JsonLimits(bytes=4 * 1024, values=16, keys=16, containers=4)
MAX_FEATURE_VALUES = 16  # per action and for the context, on average: what a body may hold in all
MANY_ACTIONS = 10_000  # a rank body's counts fit this many actions (max_actions refuses them by name)


def rank_limits(limits: DecisionServingSection) -> JsonLimits:
    """A rank body: the context and up to `max_actions` actions, each with a few namespaces.  The
    counts leave room for ten thousand actions with a namespace each whatever `max_actions` is, so
    a rank with too many is refused by the policy's check, which names 'actions', rather than by
    the parser's; the byte limit still bounds what parsing costs."""
    actions = max(limits.max_actions, MANY_ACTIONS)
    values = (actions + 8) * MAX_FEATURE_VALUES
    return JsonLimits(bytes=limits.max_body_bytes, values=values, keys=values, containers=4 * (actions + 8))


def parse_rank(body: Any, policy: DecisionPolicy) -> tuple[Request, dict[str, Any], list[dict[str, Any]]]:
    """(the policy's request, the context and the actions it may serve, as the body sent them)."""
    body = json_object(body, RANK_FIELDS)
    exclude = body.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise FeedbackRejected(422, "'exclude' must be a list of action ids")
    context = body.get("context") or {}
    actions = body.get("actions")
    try:
        request = policy.request(context, actions, set(exclude))
    except FeatureError as exc:
        raise FeedbackRejected(422, f"'{exc.field}': {exc.reason}") from None
    kept = [a for a in actions if a["id"] not in exclude]
    return request, context, kept


def parse_reward(body: Any, limits: DecisionServingSection) -> tuple[str, float]:
    body = json_object(body, REWARD_FIELDS)
    event_id = body.get("event_id")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID_CHARS:
        raise FeedbackRejected(422, f"'event_id' must be a string of 1..{MAX_EVENT_ID_CHARS} characters")
    if body.get("reward") is None:
        raise FeedbackRejected(422, "'reward' is required")
    try:
        reward = check_reward(body["reward"], limits.reward_min, limits.reward_max)
    except FeedbackRejected as exc:
        raise FeedbackRejected(422, f"'reward': {exc.detail}") from None
    return event_id, reward


def grpc_rank(request: Any, policy: DecisionPolicy) -> tuple[Request, dict[str, Any], list[dict[str, Any]]]:
    """A gRPC RankRequest through the same checks (a Struct's numbers are doubles, as JSON's)."""
    from google.protobuf.json_format import MessageToDict

    _decoded(request)
    body: dict[str, Any] = {"context": MessageToDict(request.context) if request.HasField("context") else {},
                            "actions": [{"id": a.id, **({"features": MessageToDict(a.features)}
                                                        if a.HasField("features") else {})} for a in request.actions],
                            "exclude": list(request.exclude)}
    return parse_rank(body, policy)


def grpc_reward(request: Any, limits: DecisionServingSection) -> tuple[str, float]:
    _decoded(request)
    body = {"event_id": request.event_id, **({"reward": request.reward} if request.HasField("reward") else {})}
    return parse_reward(body, limits)


def _decoded(request: Any) -> None:
    if isinstance(request, Undecodable):  # the proxy could not decode it (serving/grpc_messages.py)
        raise FeedbackRejected(400, f"the message is not a valid {request.message}: {request.reason}")
