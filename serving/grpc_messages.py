"""The EvolveFeedback gRPC service as Serve's proxy registers it, with messages decoded leniently.

The generated `add_EvolveFeedbackServicer_to_server` decodes each request in the proxy with the
message's `FromString`; a message that is not valid protobuf for its rpc (a string field that is
not UTF-8, as a lone surrogate would be) makes it raise, and gRPC answers UNKNOWN before any of
our code runs. Here the decoder returns `Undecodable` instead; it travels to the replica like a
message, and serving/requests.py refuses it (INVALID_ARGUMENT with the reason) as it refuses any
other bad request (serving/policy_grpc.py for EvolvePolicies). `feedback_app.GRPC_SERVICERS` names
both add functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

SERVICE = "evolve.v1.EvolveFeedback"
POLICY_SERVICE = "evolve.v1.EvolvePolicies"
POLICY_RPCS = {"Act": "ActRequest", "StartEpisodes": "StartEpisodesRequest", "LogAction": "LogActionRequest",
               "EndEpisodes": "EndEpisodesRequest", "GetEpisode": "GetEpisodeRequest"}


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
        "Rank": grpc.unary_unary_rpc_method_handler(servicer.Rank, request_deserializer=lenient(pb.RankRequest),
                                                    response_serializer=pb.RankResponse.SerializeToString),
        "Reward": grpc.unary_unary_rpc_method_handler(servicer.Reward, request_deserializer=lenient(pb.RewardRequest),
                                                      response_serializer=pb.RewardResponse.SerializeToString),
    }
    _register(server, SERVICE, handlers)


def add_policy_servicer_to_server(servicer: Any, server: Any) -> None:
    """EvolvePolicies, its requests decoded leniently."""
    import grpc

    from serving.proto import evolve_pb2 as pb

    handlers = {}
    for rpc, request in POLICY_RPCS.items():
        response = pb.DESCRIPTOR.services_by_name["EvolvePolicies"].methods_by_name[rpc].output_type.name
        handlers[rpc] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, rpc), request_deserializer=lenient(getattr(pb, request)),
            response_serializer=getattr(pb, response).SerializeToString)
    _register(server, POLICY_SERVICE, handlers)


def _register(server: Any, service: str, handlers: dict) -> None:
    import grpc

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63
        server.add_registered_method_handlers(service, handlers)
