"""What the policy server's episode routes do (docs/client-rl.md); serving/policy_server.py routes to them.

    start        POST .../episodes            open episodes (named by the client, or by the server)
    act_steps    POST .../act with episode ids the served actions become the episodes' steps; the
                                               observation completes each episode's previous step
    log_action   POST .../log_action          a step whose action the client chose itself
    end          POST .../episodes/end        the last step's reward, the observation after it
    view         GET  .../episodes/{id}       where an episode stands

Each sends one call to the policy's episode joiner (serving/episodes.py), which checks every row
before anything counts and answers once the completed steps are stored.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

from serving.episode_join import StepRow
from serving.episode_requests import EndRequest, LogActionRequest, StartRequest, end_rows, logged_actions, \
    start_names, step_rows
from serving.join_rules import FeedbackRejected


def parse(model: type[BaseModel], body: Any) -> Any:
    """A route's request model; 422 naming the first field that does not fit."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise FeedbackRejected(422, f"{where}: {first['msg']}") from None


async def ask(call: Any, *args: Any) -> Any:
    """One call to the episode joiner (`joiner.method`), and its answer or its refusal as the HTTP answer."""
    try:
        reply = await call.remote(*args)
    except Exception as exc:  # the joiner is restarting or gone: nothing of this call counted
        raise HTTPException(503, detail=f"the episode joiner is not answering ({type(exc).__name__}); "
                                        "send the same call again", headers={"Retry-After": "1"}) from None
    return answered(reply)


def answered(reply: dict) -> Any:
    """The joiner's answer, or its refusal as the HTTP answer."""
    if reply["status"] != 200:
        retry = reply.get("retry_after_s")
        headers = {"Retry-After": str(max(1, round(retry)))} if retry else None
        raise HTTPException(reply["status"], detail=reply["detail"], headers=headers)
    return reply["body"]


def no_joiner(policy_id: str) -> HTTPException:
    return HTTPException(404, detail=f"policy {policy_id!r} takes no client episodes (its loop's "
                                     "`experience` is rollouts)")


async def start(joiner: Any, body: Any, client: str | None) -> dict:
    names, field, single = start_names(parse(StartRequest, body))
    ids = await ask(joiner.start, names, client, field)
    return {"episode_id": ids[0]} if single else {"episode_ids": ids}


async def act_steps(joiner: Any, rows: list[StepRow], field: str, client: str | None) -> list[dict]:
    """The joiner's answer per row: the served step, or the earlier answer to a retried one."""
    return await ask(joiner.steps, rows, client, field)


async def log_action(joiner: Any, body: Any, client: str | None, to_batch: Callable, n_actions: int,
                     version: int) -> dict:
    req = parse(LogActionRequest, body)
    obs, single = to_batch(req.obs)
    parsed = step_rows(req, len(obs), single)
    if parsed is None:
        raise ValueError("episode_id: a logged action belongs to an episode (or episode_ids for a batch)")
    rows, field = parsed
    for row, o, (action, propensity) in zip(rows, obs, logged_actions(req, len(obs), single, n_actions)):
        row.obs, row.action, row.propensity, row.version = o, action, propensity, version
        row.answer = {"action": action, "propensity": propensity, "version": version}
    steps = [a["step"] for a in await ask(joiner.steps, rows, client, field)]
    return {"step": steps[0]} if single else {"steps": steps}


async def end(joiner: Any, body: Any, client: str | None, check_obs: Callable) -> dict:
    rows, field, single = end_rows(parse(EndRequest, body), 0, check_obs)
    answers = await ask(joiner.end, rows, client, field)
    return answers[0] if single else {"episodes": answers}


async def view(joiner: Any, episode_id: str, client: str | None) -> dict:
    return await ask(joiner.view, episode_id, client)


def fill(rows: list[StepRow], obs: np.ndarray, actions: np.ndarray, propensity: np.ndarray, dist: np.ndarray,
         versions: np.ndarray) -> None:
    """Each row's served step: what the replica answered for its observation."""
    obs_rows, probs = obs.tolist(), dist.tolist()
    for i, row in enumerate(rows):
        row.obs = obs_rows[i]
        row.action, row.propensity, row.version = int(actions[i]), float(propensity[i]), int(versions[i])
        row.answer = {"action": row.action, "propensity": row.propensity, "version": row.version,
                      "action_probs": probs[i]}
