"""EvolvePolicies (serving/proto/evolve.proto) as the policy server's HTTP bodies and answers.

Each rpc's message becomes the batch form of its HTTP body (docs/client-rl.md), so a gRPC call
takes the same checks, the same joiner calls and the same refusals as the HTTP route; the answer
comes back as the rpc's response message. A refusal's reason names the field as the message spells
it (`episodes[2].reward`, `obs[0].values[3]`), not as the JSON body would (`rewards[2]`).
"""

from __future__ import annotations

import re
from typing import Any

from serving.grpc_messages import Undecodable
from serving.join_rules import FeedbackRejected

MAX_ROWS = 1024  # the most observations, logged actions or ends one call takes (as over HTTP)

# per rpc: a JSON body's batch field -> where the message holds it ({i}: the row)
ACT_FIELDS = {"episode_ids": "episodes[{i}]", "steps": "episodes[{i}].step", "rewards": "episodes[{i}].reward",
              "obs": "obs[{i}].values", "clients": "clients[{i}]"}
LOG_FIELDS = {"episode_ids": "actions[{i}]", "steps": "actions[{i}].step", "rewards": "actions[{i}].reward",
              "obs": "actions[{i}].obs.values", "actions": "actions[{i}].action",
              "propensities": "actions[{i}].propensity"}
END_FIELDS = {"episode_ids": "episodes[{i}]", "steps": "episodes[{i}].step", "rewards": "episodes[{i}].reward",
              "final_obs": "episodes[{i}].final_obs.values"}
START_FIELDS = {"episode_ids": "episode_ids[{i}]"}
_WHERE = re.compile(r"^(\w+)(?:\[(\d+)\]|\.(\d+))(?:\[(\d+)\]|\.(\d+))?")  # rewards[2], or pydantic's rewards.2


def decoded(message: Any) -> Any:
    if isinstance(message, Undecodable):  # the proxy could not decode it (serving/grpc_messages.py)
        raise FeedbackRejected(400, f"the message is not a valid {message.message}: {message.reason}")
    return message


def _rows(name: str, rows: Any) -> list:
    if not 1 <= len(rows) <= MAX_ROWS:
        raise FeedbackRejected(422, f"{name}: 1..{MAX_ROWS} per call, got {len(rows)}")
    return list(rows)


def _opt(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


# ---- requests -> HTTP bodies ---------------------------------------------------------------------
def act_body(request: Any) -> dict:
    obs = [list(o.values) for o in _rows("obs", decoded(request).obs)]
    body: dict[str, Any] = {"obs": obs}
    if request.clients:
        if len(request.clients) != len(obs):
            raise FeedbackRejected(422, f"clients: {len(request.clients)} keys for {len(obs)} observations")
        body["clients"] = list(request.clients)
    if request.episodes:
        if len(request.episodes) != len(obs):
            raise FeedbackRejected(422, f"episodes: {len(request.episodes)} steps for {len(obs)} observations")
        body.update(_steps(request.episodes))
    return body


def start_body(request: Any) -> dict:
    decoded(request)
    if request.episode_ids and request.count:
        raise FeedbackRejected(422, "count: give episode_ids or count, not both")
    if request.episode_ids:
        return {"episode_ids": [name or None for name in _rows("episode_ids", request.episode_ids)]}
    return {"count": request.count or 1}


def log_body(request: Any) -> dict:
    rows = _rows("actions", decoded(request).actions)
    body = {"obs": [list(r.obs.values) for r in rows], **_steps(rows)}
    body["actions"] = [_opt(r, "action") for r in rows]
    body["propensities"] = [_opt(r, "propensity") for r in rows]
    return body


def end_body(request: Any) -> dict:
    rows = _rows("episodes", decoded(request).episodes)
    return {"episode_ids": [r.episode_id for r in rows], "rewards": [_opt(r, "reward") for r in rows],
            "terminated": [r.terminated for r in rows], "truncated": [r.truncated for r in rows],
            "final_obs": [list(r.final_obs.values) if r.HasField("final_obs") else None for r in rows],
            "steps": [_opt(r, "step") for r in rows]}


def _steps(rows: Any) -> dict:
    return {"episode_ids": [r.episode_id for r in rows], "steps": [_opt(r, "step") for r in rows],
            "rewards": [_opt(r, "reward") for r in rows]}


# ---- answers -> response messages ------------------------------------------------------------------
def act_message(answer: Any) -> Any:
    """An ActResponse (serving/policy_server.py) of a batch request as the rpc's message."""
    from serving.proto import evolve_pb2 as pb

    n = len(answer.action)
    versions = answer.version if isinstance(answer.version, list) else [answer.version] * n
    steps = answer.step if answer.step is not None else [None] * n
    return pb.ActResponse(policy_id=answer.policy_id, actions=[
        pb.Action(action=a, q_values=q, propensity=p, action_probs=d, version=v,
                  **({} if s is None else {"step": s}))
        for a, q, p, d, v, s in zip(answer.action, answer.q_values, answer.propensity, answer.action_probs,
                                    versions, steps)])


def start_message(answer: dict) -> Any:
    from serving.proto import evolve_pb2 as pb

    return pb.StartEpisodesResponse(episode_ids=answer["episode_ids"])


def log_message(answer: dict) -> Any:
    from serving.proto import evolve_pb2 as pb

    return pb.LogActionResponse(steps=answer["steps"])


def end_message(answer: dict) -> Any:
    from serving.proto import evolve_pb2 as pb

    return pb.EndEpisodesResponse(episodes=[pb.EpisodeEnded(episode_id=e["episode_id"], episode_return=e["return"],
                                                            length=e["length"]) for e in answer["episodes"]])


def episode_message(view: dict) -> Any:
    from serving.proto import evolve_pb2 as pb

    reason = {} if view.get("reason") is None else {"reason": view["reason"]}
    return pb.EpisodeState(episode_id=view["episode_id"], state=view["state"], length=view["length"],
                           episode_return=view["return"], **reason)


# ---- refusals ----------------------------------------------------------------------------------------
def in_message_terms(detail: str, fields: dict[str, str]) -> str:
    """A reason that names a JSON body's batch field (`rewards[2]: ...`) named as the message spells it."""
    m = _WHERE.match(detail)
    if m is None or m.group(1) not in fields:
        return detail
    row, value = m.group(2) or m.group(3), m.group(4) or m.group(5)
    where = fields[m.group(1)].format(i=row)
    if value is not None:
        where += f"[{value}]"
    elif where.endswith(".values"):
        where = where[: -len(".values")]
    return where + detail[m.end():]
