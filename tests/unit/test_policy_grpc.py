"""EvolvePolicies: the policy server's rpcs driven without Serve, on a real EpisodeJoiner (no store).

The server object is built without its Serve shell; its joiner's `.remote` calls run in this loop.
"""

import asyncio
import json
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from core.auth.keys import AuthSection, mint
from core.models.q import spec_for_env
from core.models.q_policy import QPolicy
from core.stats.exploration import ExplorationSection
from serving import policy_grpc as rpc
from serving.auth_guard import RouteGuard
from serving.episodes import EpisodeJoiner
from serving.grpc_messages import Undecodable
from serving.policy_server import PolicyServer
from serving.proto import evolve_pb2 as pb

SPEC = spec_for_env("CartPole-v1", "dqn", [16])


class Local:
    """A plain object behind a Ray-handle-shaped `.method.remote(...)`."""

    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self.obj, name))


class Call:
    """A gRPC call's context as Serve hands it to the replica: metadata in, status out."""

    def __init__(self, *metadata):
        self.metadata, self.code, self.details = list(metadata), None, None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def _server(auth=None):
    server = object.__new__(PolicyServer.func_or_class.__mro__[1])  # the class under its Serve ingress shell
    joiner = EpisodeJoiner(None, "cp", "cp", 0.99, episode_ttl_s=60)
    server.__dict__.update(
        guard=RouteGuard(auth), policy_ids={"cp"}, policies={"cp": QPolicy(SPEC, None, 3)},
        joiners={"cp": Local(joiner)}, explore={"cp": ExplorationSection()}, canaries={}, gates={}, _faults={},
        _rng=np.random.default_rng(0))
    return server, joiner


def _obs(*values):
    return pb.Observation(values=list(values))


def _call(method, request, *metadata):
    call = Call(*metadata)
    return asyncio.run(method(request, call)), call


def test_an_episode_played_over_grpc():
    server, joiner = _server()

    async def play():
        who = Call(("x-evolve-client", "app-1"))
        started = await server.StartEpisodes(pb.StartEpisodesRequest(episode_ids=["e1", ""]), who)
        e1, named = started.episode_ids
        assert e1 == "e1" and named
        first = await server.Act(pb.ActRequest(obs=[_obs(0, 0, 0, 0), _obs(1, 0, 0, 0)], episodes=[
            pb.EpisodeStep(episode_id=e1, step=0), pb.EpisodeStep(episode_id=named, step=0)]), who)
        assert [a.step for a in first.actions] == [0, 0] and {a.version for a in first.actions} == {3}
        assert all(len(a.q_values) == 2 and a.propensity == 1.0 for a in first.actions)
        again = await server.Act(pb.ActRequest(obs=[_obs(0, 0, 0, 0)], episodes=[
            pb.EpisodeStep(episode_id=e1, step=0)]), who)  # a retry: the same answer, nothing stored
        assert again.actions[0].action == first.actions[0].action and who.code is None
        logged = await server.LogAction(pb.LogActionRequest(actions=[pb.LoggedAction(
            episode_id=e1, step=1, reward=1.0, obs=_obs(0.1, 0, 0, 0), action=1, propensity=0.5)]), who)
        assert list(logged.steps) == [1]
        ended = await server.EndEpisodes(pb.EndEpisodesRequest(episodes=[pb.EpisodeEnd(
            episode_id=e1, reward=1.0, terminated=True, step=1)]), who)
        state = await server.GetEpisode(pb.GetEpisodeRequest(episode_id=e1), who)
        return ended, state, who

    ended, state, who = asyncio.run(play())
    assert who.code is None, who.details
    assert ended.episodes[0].episode_return == 2.0 and ended.episodes[0].length == 2
    assert (state.state, state.length, state.episode_return) == ("terminated", 2, 2.0)
    assert not state.HasField("reason")
    assert joiner.stats()["steps_acknowledged"] == 2  # step 0 (completed by step 1) and the logged step 1


@pytest.mark.parametrize("request_, code, where", [
    (pb.ActRequest(obs=[_obs(0, 0, 0)]), grpc.StatusCode.INVALID_ARGUMENT, "obs[0]: "),
    (pb.ActRequest(obs=[_obs(0, 0, 0, 0), _obs(0, 0, float("nan"), 0)]), grpc.StatusCode.INVALID_ARGUMENT,
     "obs[1].values[2]"),
    (pb.ActRequest(obs=[]), grpc.StatusCode.INVALID_ARGUMENT, "obs: "),
    (pb.ActRequest(obs=[_obs(0, 0, 0, 0)], episodes=[pb.EpisodeStep(episode_id="nobody", step=0)]),
     grpc.StatusCode.NOT_FOUND, "episodes[0]: "),
    (pb.ActRequest(obs=[_obs(0, 0, 0, 0)], episodes=[pb.EpisodeStep(episode_id="x"), pb.EpisodeStep()]),
     grpc.StatusCode.INVALID_ARGUMENT, "episodes: 2 steps for 1 observations"),
    (pb.ActRequest(obs=[_obs(0, 0, 0, 0)], episodes=[pb.EpisodeStep(episode_id="x", reward=float("inf"))]),
     grpc.StatusCode.INVALID_ARGUMENT, "episodes[0].reward"),
    (pb.ActRequest(policy_id="other", obs=[_obs(0, 0, 0, 0)]), grpc.StatusCode.NOT_FOUND, "unknown policy"),
    (Undecodable("ActRequest", "Error parsing message"), grpc.StatusCode.INVALID_ARGUMENT, "not a valid ActRequest"),
])
def test_bad_act_calls_are_refused_naming_the_field(request_, code, where):
    server, _ = _server()
    reply, call = _call(server.Act, request_)
    assert call.code == code and where in call.details, call.details
    assert reply == pb.ActResponse()


def test_bad_episode_calls_are_refused_naming_the_field():
    server, joiner = _server()

    async def refusals():
        who = Call()
        await server.StartEpisodes(pb.StartEpisodesRequest(episode_ids=["e"]), who)
        await server.Act(pb.ActRequest(obs=[_obs(0, 0, 0, 0)], episodes=[pb.EpisodeStep(episode_id="e", step=0)]),
                         who)
        out = []
        for method, request in [
            (server.LogAction, pb.LogActionRequest(actions=[pb.LoggedAction(
                episode_id="e", step=1, reward=1.0, obs=_obs(0, 0, 0, 0), action=7)])),
            (server.LogAction, pb.LogActionRequest(actions=[pb.LoggedAction(
                episode_id="e", step=1, reward=1.0, obs=_obs(0, 0, 0), action=0)])),
            (server.EndEpisodes, pb.EndEpisodesRequest(episodes=[pb.EpisodeEnd(episode_id="e", terminated=True)])),
            (server.EndEpisodes, pb.EndEpisodesRequest(episodes=[pb.EpisodeEnd(
                episode_id="e", reward=1.0, truncated=True, final_obs=_obs(0, 0))])),
            (server.StartEpisodes, pb.StartEpisodesRequest(episode_ids=["a"], count=2)),
            (server.GetEpisode, pb.GetEpisodeRequest(episode_id="nobody")),
        ]:
            call = Call()
            await method(request, call)
            out.append((call.code, call.details))
        return out

    got = asyncio.run(refusals())
    expected = [(grpc.StatusCode.INVALID_ARGUMENT, "actions[0].action: 7 is outside"),
                (grpc.StatusCode.INVALID_ARGUMENT, "actions[0].obs: an observation has 4"),
                (grpc.StatusCode.INVALID_ARGUMENT, "episodes[0].reward: "),
                (grpc.StatusCode.INVALID_ARGUMENT, "episodes[0].final_obs: an observation has 4"),
                (grpc.StatusCode.INVALID_ARGUMENT, "count: "),
                (grpc.StatusCode.NOT_FOUND, "unknown episode")]
    for (code, details), (want_code, want) in zip(got, expected):
        assert code == want_code and want in details, (code, details, want)
    assert joiner.stats()["steps_acknowledged"] == 0  # the first step waits for the next observation


def test_with_keys_a_call_without_one_is_unauthenticated(tmp_path):
    record, key = mint(["predict"], "app")
    section = AuthSection(enabled=True, keys_file=str(tmp_path / "none.json"), keys_env="EVOLVE_TEST_NO_KEYS")
    server, _ = _server({"section": section.model_dump(mode="json"), "snapshot": json.dumps([record.model_dump()])})
    request = pb.ActRequest(obs=[_obs(0, 0, 0, 0)])
    _, bare = _call(server.Act, request)
    _, started = _call(server.StartEpisodes, pb.StartEpisodesRequest(count=1))
    assert bare.code == started.code == grpc.StatusCode.UNAUTHENTICATED
    reply, keyed = _call(server.Act, request, ("authorization", f"Bearer {key}"))
    assert keyed.code is None and len(reply.actions) == 1


def test_reasons_name_fields_as_the_message_spells_them():
    assert rpc.in_message_terms("rewards[2]: nan is not a finite number", rpc.ACT_FIELDS) == \
        "episodes[2].reward: nan is not a finite number"
    assert rpc.in_message_terms("obs[1][3] is inf: ...", rpc.ACT_FIELDS) == "obs[1].values[3] is inf: ..."
    assert rpc.in_message_terms("final_obs[0]: an observation", rpc.END_FIELDS) == "episodes[0].final_obs: an observation"
    assert rpc.in_message_terms("unknown policy 'x'", rpc.ACT_FIELDS) == "unknown policy 'x'"
    assert rpc.in_message_terms("obs.1.3: Input should be a valid number", rpc.ACT_FIELDS) == \
        "obs[1].values[3]: Input should be a valid number"
