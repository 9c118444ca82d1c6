"""A served decision as the feedback join holds it, and what its reward means.

The join's bookkeeping (TTL, tombstones, idempotent repeats, 404 / 409 / 410, the per-sender cap,
take / settle / reopen around the write) is `serving.event_join.EventJoin`, shared with the
classifier and the generator; this module says what differs for a decision:

    feedback_key      a `reward` only (the app checks it against the policy's declared range
                      first, so the refusal names that range); a label or a preference is a 422
    feedback_row      the `decisions` table's row (core/data/schemas.py): the context and the
                      actions as the request sent them, the served action, its propensity, every
                      action's probability, the reward and where it came from
    default_feedback  a decision whose reward never comes: when its window (`reward_wait_s`, the
                      join's TTL) closes, the join stores `default_reward` for it, as Azure
                      Personalizer did, so a policy is not trained only on the decisions that
                      clients chose to answer
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serving.join_rules import FeedbackRejected, check_reward


@dataclass
class DecisionEvent:
    event_id: str
    context: dict[str, Any]
    actions: list[dict[str, Any]]  # the actions it could serve, as sent (excluded ones left out)
    chosen: int
    propensity: float
    probs: list[float]
    policy_id: str
    policy_version: int
    actor_id: str  # the replica that served it
    default_reward: float | None = None  # stored when no reward comes in time; None: nothing is
    created: float = 0.0  # set by the join's clock
    client: str | None = None
    feedback: tuple | None = None  # (reward, source)
    answer: dict[str, Any] | None = None
    uncertain: tuple | None = None
    labels: tuple[str, ...] = ()  # a decision has no label set: its feedback is a reward

    @property
    def action_id(self) -> str:
        return self.actions[self.chosen]["id"]

    # ---- what EventJoin asks of an event -----------------------------------------------
    @staticmethod
    def feedback_key(label: int | None, reward: float | None, better_than: str | None) -> tuple:
        if label is not None or better_than is not None or reward is None:
            raise FeedbackRejected(422, "feedback on a decision is a 'reward'")
        return check_reward(reward, float("-inf"), float("inf")), "client"

    @staticmethod
    def describe(key: tuple) -> str:
        return f"reward={key[0]:g}"

    def check_peer(self, peer: Any) -> None:
        raise FeedbackRejected(422, "a decision's feedback is a reward, not a preference")

    def feedback_answer(self, key: tuple) -> dict[str, Any]:
        return {"event_id": self.event_id, "accepted": True, "model_version": self.policy_version,
                "action_id": self.action_id, "reward": key[0]}

    def feedback_row(self, key: tuple, peer: Any = None) -> dict[str, Any]:
        return {"event_id": self.event_id, "context": json.dumps(self.context, separators=(",", ":")),
                "actions": json.dumps(self.actions, separators=(",", ":")), "chosen": self.chosen,
                "action_id": self.action_id, "propensity": self.propensity, "probs": list(self.probs),
                "reward": key[0], "reward_source": key[1]}

    def default_feedback(self) -> tuple | None:
        return None if self.default_reward is None else (self.default_reward, "default")

    def release(self) -> None:
        """Its row is stored: the features go, the event answers repeats."""
        self.context, self.actions = {}, [{"id": self.action_id}]
        self.chosen = 0

    def text_rows(self) -> list[str]:
        return []  # no text for the continual MLM
