"""A served completion as the feedback join holds it, and what its feedback means.

The join's bookkeeping (TTL, tombstones, idempotent repeats, 404 / 409 / 410, the per-sender cap,
take / settle / reopen around the write) is `serving.event_join.EventJoin`, shared with the
classifier; this module says what differs for a completion:

    feedback_key   thumbs (`label` "up" / "down", or 1 / 0), a `reward` in [0, 1], or `better_than`:
                   the id of another completion of the same prompt that this one beats; exactly one
    feedback_row   the `completions` table's row (core/data/schemas.py): the completion, its token
                   ids and both log-probabilities, the feedback, and for a preference the rejected
                   completion's own
    peer check     a preference's other completion must be known, unexpired and of the same prompt
                   (`group_id`: the request that asked for the completions), each a refusal naming
                   'better_than'

A completion's event keeps its tokens after its feedback is stored: a later preference may name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.join_rules import FeedbackRejected, check_reward

THUMBS = ["down", "up"]  # the label set of a completion: a thumbs-up is label 1
FEEDBACK_NAMES = ("thumbs", "reward", "better_than")


@dataclass
class CompletionEvent:
    event_id: str
    group_id: str  # the request that asked for it: its n completions share one prompt
    prompt: str
    prompt_ids: np.ndarray  # int32
    completion: str
    token_ids: np.ndarray  # int32
    logprobs: np.ndarray  # float32, under the model
    sampling_logprobs: np.ndarray  # float32, under the distribution that drew each token
    temperature: float
    top_p: float
    policy_id: str
    policy_version: int
    actor_id: str  # the replica that served it
    created: float = 0.0  # set by the join's clock
    client: str | None = None  # who asked: its open events are capped
    feedback: tuple | None = None  # what was accepted: (thumbs index, reward, better_than)
    answer: dict[str, Any] | None = None
    uncertain: tuple | None = None
    labels: tuple[str, ...] = tuple(THUMBS)

    # ---- what EventJoin asks of an event -----------------------------------------------
    @staticmethod
    def feedback_key(label: int | None, reward: float | None, better_than: str | None) -> tuple:
        given = [name for name, v in zip(FEEDBACK_NAMES, (label, reward, better_than)) if v is not None]
        if len(given) != 1:
            raise FeedbackRejected(422, "feedback on a completion is one of 'thumbs', 'reward' or 'better_than'"
                                        + (f"; got {', '.join(map(repr, given))}" if given else ""))
        return label, check_reward(reward), better_than

    @staticmethod
    def describe(key: tuple) -> str:
        label, reward, better_than = key
        return (f"thumbs={THUMBS[label]}" if label is not None
                else f"reward={reward}" if reward is not None else f"better_than={better_than!r}")

    def check_peer(self, peer: Any) -> None:
        """A preference's other completion: another completion of this one's prompt."""
        if not isinstance(peer, CompletionEvent) or peer.group_id != self.group_id:
            raise FeedbackRejected(422, f"'better_than' names {peer.event_id!r}, a completion of another prompt; "
                                        "a preference compares two completions of one request's prompt")
        if peer.event_id == self.event_id:
            raise FeedbackRejected(422, "'better_than' names the completion itself; name another completion "
                                        "of the same prompt")

    def feedback_answer(self, key: tuple) -> dict[str, Any]:
        kind = FEEDBACK_NAMES[next(i for i, v in enumerate(key) if v is not None)]
        return {"event_id": self.event_id, "accepted": True, "model_version": self.policy_version, "feedback": kind}

    def feedback_row(self, key: tuple, peer: "CompletionEvent | None") -> dict[str, Any]:
        label, reward, _ = key
        kind = "thumbs" if label is not None else "reward" if reward is not None else "preference"
        return {
            "event_id": self.event_id, "group_id": self.group_id, "prompt": self.prompt,
            "prompt_ids": self.prompt_ids.tolist(), "completion": self.completion, "token_ids": self.token_ids.tolist(),
            "logprobs": self.logprobs.tolist(), "sampling_logprobs": self.sampling_logprobs.tolist(),
            "temperature": self.temperature, "top_p": self.top_p, "feedback": kind,
            "thumbs_up": None if label is None else label == 1, "reward": reward,
            "rejected_event_id": peer.event_id if peer else None,
            "rejected_completion": peer.completion if peer else None,
            "rejected_token_ids": peer.token_ids.tolist() if peer else None,
            "rejected_logprobs": peer.logprobs.tolist() if peer else None,
            "rejected_sampling_logprobs": peer.sampling_logprobs.tolist() if peer else None,
            "rejected_policy_version": peer.policy_version if peer else None,
        }

    def release(self) -> None:
        """Its feedback is stored: kept whole, since a preference may still name it."""

    def text_rows(self) -> list[str]:
        return []  # prompts are not the encoder's continual-MLM text


def completion_event(event_id: str, group_id: str, prompt: str, completion: Any, temperature: float, top_p: float,
                     policy_id: str, version: int, replica: str, client: str | None) -> CompletionEvent:
    """The event of one `core.models.generator.Completion`, its arrays compact (held until the TTL)."""
    return CompletionEvent(
        event_id=event_id, group_id=group_id, prompt=prompt, prompt_ids=np.asarray(completion.prompt_ids, np.int32),
        completion=completion.text, token_ids=np.asarray(completion.token_ids, np.int32),
        logprobs=np.asarray(completion.logprobs, np.float32),
        sampling_logprobs=np.asarray(completion.sampling_logprobs, np.float32),
        temperature=float(temperature), top_p=float(top_p), policy_id=policy_id, policy_version=version,
        actor_id=replica, client=client)
