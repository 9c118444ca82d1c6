"""The EvolveFeedback gRPC service as Serve's proxy registers it, with messages decoded leniently.

The generated `add_EvolveFeedbackServicer_to_server` decodes each request in the proxy with the
message's `FromString`; a message that is not valid protobuf for its rpc (a string field that is
not UTF-8, as a lone surrogate would be) makes it raise, and gRPC answers UNKNOWN before any of
our code runs. Here the decoder returns `Undecodable` instead; it travels to the replica like a
message, and serving/requests.py refuses it (INVALID_ARGUMENT with the reason) as it refuses any
other bad request. `feedback_app.GRPC_SERVICER` names `add_servicer_to_server`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

SERVICE = "evolve.v1.EvolveFeedback"


@dataclass(frozen=True)
class Undecodable:
    """A request the proxy could not decode as `message`; `reason`: the decoder's own words."""

    message: str
    reason: str


def lenient(message_type: Any) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return message_type.FromString(raw)
        except Exception as exc:  # noqa: BLE001 (whatever the decoder raises, the client gets the reason)
            return Undecodable(message_type.DESCRIPTOR.name, " ".join(str(exc).split())[:200])

    return decode


def add_servicer_to_server(servicer: Any, server: Any) -> None:
    """What the generated add function does, with `lenient` request decoders."""
    import grpc

    from serving.proto import evolve_pb2 as pb

    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(servicer.Predict,
                                                       request_deserializer=lenient(pb.PredictRequest),
                                                       response_serializer=pb.PredictResponse.SerializeToString),
        "Feedback": grpc.unary_unary_rpc_method_handler(servicer.Feedback,
                                                        request_deserializer=lenient(pb.FeedbackRequest),
                                                        response_serializer=pb.FeedbackResponse.SerializeToString),
        "Generate": grpc.unary_unary_rpc_method_handler(servicer.Generate,
                                                        request_deserializer=lenient(pb.GenerateRequest),
                                                        response_serializer=pb.GenerateResponse.SerializeToString),
        "CompletionFeedback": grpc.unary_unary_rpc_method_handler(
            servicer.CompletionFeedback, request_deserializer=lenient(pb.CompletionFeedbackRequest),
            response_serializer=pb.CompletionFeedbackResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63
        server.add_registered_method_handlers(SERVICE, handlers)
