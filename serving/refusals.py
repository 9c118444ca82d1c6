"""A refused request, said in the protocol it came in: HTTP status and detail, or a gRPC status.

Every route refuses through `FeedbackRejected` (serving/join.py): its status
and one-line reason are the same whether the request came over HTTP or gRPC.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from fastapi import HTTPException

from serving.join import FeedbackRejected

GRPC_CODES = {400: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 404: "NOT_FOUND",
              409: "ALREADY_EXISTS", 410: "FAILED_PRECONDITION", 503: "UNAVAILABLE",
              401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}


@contextmanager
def http_refusals() -> Iterator[None]:
    """A FeedbackRejected raised inside becomes the HTTP error it names."""
    try:
        yield
    except FeedbackRejected as exc:
        raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None


def grpc_refusal(context: Any, exc: FeedbackRejected) -> None:
    """Set the gRPC status matching the refusal's HTTP status on the call's context."""
    import grpc

    if context is not None:
        context.set_code(getattr(grpc.StatusCode, GRPC_CODES.get(exc.status, "UNKNOWN")))
        context.set_details(exc.detail)
