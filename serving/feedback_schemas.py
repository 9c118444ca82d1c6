"""The feedback app's request and response models: its OpenAPI contract (serving/feedback_app.py serves it).

Bodies are parsed by hand in serving/requests.py (400 for bytes that are not UTF-8 JSON,
one-line reasons), so these models name the contract for the spec and the responses;
`request_body` declares a request's schema where FastAPI does not see it.
"""

# no `from __future__ import annotations`: FastAPI must see the annotations themselves

from typing import Any

from pydantic import BaseModel, Field

from serving.requests import MAX_TEXTS


# ---- request / response models (the OpenAPI contract) -------------------------------
class PredictRequest(BaseModel):
    """Exactly one of `text` (with `text_pair` for a pair model), `texts` and `pairs`."""

    text: str | None = Field(None, description="one text (the first of a pair)")
    text_pair: str | None = Field(None, description="the second text of a pair (a pair model only)")
    texts: list[str] | None = Field(None, description=f"1..{MAX_TEXTS} texts")
    pairs: list[list[str]] | None = Field(None, description=f"1..{MAX_TEXTS} [text, text_pair] pairs "
                                          "(a pair model only)")


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float] = Field(..., description="label name -> probability")
    event_id: str = Field(..., description="name this prediction in its feedback")
    model_version: int
    novelty: float | None = Field(None, description="0..100: how unlike the requests seen so far "
                                  "(the novelty autoencoder's percentile; null before its first version)")
    propensity: float = Field(1.0, description="the probability `label` was served with "
                              "(1 unless serving.exploration samples the answer)")


class PredictBatchResponse(BaseModel):
    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    """The true label, or a reward in [0, 1], or both; one feedback per prediction."""

    event_id: str
    label: str | int | None = Field(None, description="a label name, or its index")
    reward: float | None = Field(None, ge=0, le=1)


class FeedbackResponse(BaseModel):
    event_id: str
    accepted: bool
    model_version: int = Field(..., description="the version that made the prediction")
    correct: bool | None = Field(None, description="the prediction matched the label (null: reward only)")


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    policy_id: str
    model_version: int | None
    batching: bool
    texts_per_forward: float | None = Field(None, description="mean texts per model call: how well batching works")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    # the body is parsed by hand (400 for bytes that are not UTF-8 JSON, one-line reasons),
    # so its schema is declared for the OpenAPI spec here
    schema = _inline_defs(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A nested model's `$defs` written in place: a `#/$defs/...` reference inside an operation's
    schema would point at the spec's root, which has no `$defs`."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)
