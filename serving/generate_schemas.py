"""The generator app's request and response models: its OpenAPI contract (serving/generate_app.py serves it).

Bodies are parsed by hand in serving/generate_requests.py (one-line reasons naming the field); these
models name the contract for the spec and the responses.
"""

# no `from __future__ import annotations`: FastAPI must see the annotations themselves

from typing import Literal

from pydantic import BaseModel, Field


class GenerateRequest(BaseModel):
    prompt: str = Field(..., description="the text to continue (not empty; at most serving.max_prompt_chars)")
    max_new_tokens: int | None = Field(None, ge=1, description="at most serving.max_new_tokens_limit")
    temperature: float | None = Field(None, ge=0, description="0: greedy; at most serving.max_temperature")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, description="completions of the prompt, at most serving.max_n")


class CompletionOut(BaseModel):
    event_id: str = Field(..., description="name this completion in its feedback")
    text: str
    token_ids: list[int]
    logprobs: list[float] = Field(..., description="each token's log-probability under the version that "
                                  "sampled it (its raw logits, temperature 1)")
    sampling_logprobs: list[float] = Field(..., description="each token's log-probability under the "
                                           "distribution it was drawn from (temperature, top-p); 0 when greedy")
    finish: Literal["stop", "length"]


class GenerateResponse(BaseModel):
    policy_id: str
    model_version: int = Field(..., description="the version that sampled every completion")
    group_id: str = Field(..., description="this request: a preference compares two completions of one group")
    completions: list[CompletionOut]


class CompletionFeedbackRequest(BaseModel):
    """Exactly one of `thumbs`, `reward` and `better_than`; one feedback per completion."""

    event_id: str
    thumbs: Literal["up", "down"] | None = None
    reward: float | None = Field(None, ge=0, le=1)
    better_than: str | None = Field(None, description="the event id of a worse completion of the same prompt")


class CompletionFeedbackResponse(BaseModel):
    event_id: str
    accepted: bool
    model_version: int = Field(..., description="the version that sampled the completion")
    feedback: Literal["thumbs", "reward", "better_than"]


class GeneratorHealth(BaseModel):
    status: str
    policy_id: str
    model_version: int | None
    completions_per_call: float | None = Field(None, description="mean completions per generate call: how well "
                                               "batching works")
