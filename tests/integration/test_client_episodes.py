"""Client episodes on a real run: an external process teaches a CartPole policy through the API alone.

One `evolve run` of the cartpole preset with `experience: clients` (no rollout actors) for the module,
over HTTP and gRPC (keys off for gRPC too: `allow_open_grpc_unsafe`, a loopback test run).
The external client (tests/integration/external_client.py) imports neither Ray nor Evolve.
"""

import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pyarrow.parquet as pq
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.cli import main as evolve
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, serving, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 300
EXAMPLES = 60  # per route and mode (HTTP), per rpc (gRPC)
TTL_S = 20  # the bad-input test takes seconds on a loaded machine: its bystander must outlive them
CLIENT = Path(__file__).with_name("external_client.py")


@pytest.fixture(scope="module")
def client_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    http_port, dash_port, grpc_port = free_port(), free_port(), free_port()
    proc = CliProcess(
        "run", "configs/cartpole.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={dash_port}",
        "--set", "run.progress_interval_s=2", "--set", "loops.cartpole.experience=clients",
        "--set", "loops.cartpole.eval.stop_when_solved=false",
        "--set", f"loops.cartpole.clients.episode_ttl_s={TTL_S}",
        "--set", "serving.grpc=true", "--set", f"serving.grpc_port={grpc_port}",
        "--set", "serving.auth.allow_open_grpc_unsafe=true",
    )
    with serving(proc, timeout_s=120):
        base = f"http://127.0.0.1:{http_port}/v1/policies/cartpole"
        wait_until(lambda: httpx.post(f"{base}/act", json={"obs": [0.0] * 4}, timeout=10).status_code == 200, 90,
                   "the first version served")
        yield {"proc": proc, "run": tmp / "run", "base": base, "tmp": tmp, "grpc": f"127.0.0.1:{grpc_port}"}


def _post(base, route, body, **kw):
    return httpx.post(f"{base}/{route}", json=body, timeout=30, **kw)


def test_bad_input_gets_a_4xx_naming_the_field_and_disturbs_no_other_episode(client_run):
    base = client_run["base"]
    other = {"x-evolve-client": "bystander"}
    (mine,) = _post(base, "episodes", {"episode_ids": ["bystander-1"]}, headers=other).json()["episode_ids"]
    assert _post(base, "act", {"obs": [0.0] * 4, "episode_id": mine, "step": 0}, headers=other).status_code == 200
    bad = _post(base, "episodes", {"episode_id": "bad-1"}).json()["episode_id"]
    assert _post(base, "act", {"obs": [0.1] * 4, "episode_id": bad, "step": 0}).status_code == 200
    ok = _post(base, "act", {"obs": [0.2] * 4, "episode_id": bad, "step": 1, "reward": 1.0})
    assert ok.status_code == 200 and ok.json()["step"] == 1

    refusals = [
        (_post(base, "act", {"obs": [0.0] * 4, "episode_id": "nobody", "step": 0}), 404, "episode_id"),
        (_post(base, "act", {"obs": [[0.0] * 4] * 2, "episode_ids": [bad, "nobody"], "steps": [2, 0],
                             "rewards": [1.0, None]}), 404, "episode_ids[1]"),
        (_post(base, "act", {"obs": [0.2] * 4, "episode_id": bad, "step": 1, "reward": 0.5}), 409, "reward"),
        (_post(base, "act", {"obs": [0.0] * 3, "episode_id": bad, "step": 2, "reward": 1.0}), 422,
         "obs: an observation has 4"),
        (_post(base, "log_action", {"obs": [0.0] * 4, "episode_id": bad, "action": 7, "step": 2, "reward": 1.0}),
         422, "action"),
        (httpx.post(f"{base}/act", content=b'{"obs": [0,0,0,0], "episode_id": "bad-1", "step": 2, "reward": NaN}',
                    headers={"content-type": "application/json"}, timeout=10), 400, "['reward']"),
        (_post(base, "act", {"obs": [0.0] * 4, "episode_id": mine, "step": 1, "reward": 1.0}), 404, "episode_id"),
    ]
    for reply, status, field in refusals:
        assert reply.status_code == status and field in reply.json()["detail"], reply.text
    # the good row of the refused batch did not count, and the bystander's episode goes on as before
    assert httpx.get(f"{base}/episodes/{bad}", timeout=10).json()["length"] == 1
    on = _post(base, "act", {"obs": [0.3] * 4, "episode_id": mine, "step": 1, "reward": 1.0}, headers=other)
    assert on.status_code == 200 and on.json()["step"] == 1


def test_an_episode_over_grpc_is_stored_like_one_over_http(client_run):
    from serving.proto import evolve_pb2 as pb
    from serving.proto import evolve_pb2_grpc

    meta = (("application", "cartpole"), ("x-evolve-client", "grpc-app"))  # the RL loop's Serve app
    obs = [pb.Observation(values=[0.01 * i] * 4) for i in range(4)]
    with grpc.insecure_channel(client_run["grpc"]) as channel:
        stub = evolve_pb2_grpc.EvolvePoliciesStub(channel)
        (episode,) = wait_until(lambda: stub.StartEpisodes(pb.StartEpisodesRequest(episode_ids=["grpc-1"]),
                                                           metadata=meta, timeout=30).episode_ids, 60, "the gRPC proxy")
        for step in range(3):
            reward = {} if step == 0 else {"reward": 1.0}
            reply = stub.Act(pb.ActRequest(obs=[obs[step]], episodes=[pb.EpisodeStep(episode_id=episode, step=step,
                                                                                      **reward)]),
                             metadata=meta, timeout=30)
            assert reply.actions[0].step == step and reply.actions[0].version >= 1
        with pytest.raises(grpc.RpcError) as info:  # a NaN reward: refused, naming the field
            stub.Act(pb.ActRequest(obs=[obs[3]], episodes=[pb.EpisodeStep(episode_id=episode, step=3,
                                                                           reward=float("nan"))]),
                     metadata=meta, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "episodes[0].reward" in info.value.details()
        ended = stub.EndEpisodes(pb.EndEpisodesRequest(episodes=[pb.EpisodeEnd(
            episode_id=episode, reward=1.0, terminated=True, step=2)]), metadata=meta, timeout=30)
        assert (ended.episodes[0].episode_return, ended.episodes[0].length) == (3.0, 3)
    # the HTTP view of the same episode: one store, one protocol or the other
    view = httpx.get(f"{client_run['base']}/episodes/grpc-1", headers={"x-evolve-client": "grpc-app"}, timeout=10)
    assert view.json()["state"] == "terminated" and view.json()["length"] == 3


def test_generated_episode_requests_get_no_server_error(client_run):
    """Schemathesis cases from the live spec of the episode routes and /act, valid and invalid: no 5xx
    but 503 (a busy episode, the joiner away)."""
    base, errors, total = client_run["base"], [], 0
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "POST" or "{policy_id}" in operation.path:
            continue
        for mode in schemathesis.GenerationMode:
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def send(case):
                nonlocal total
                response = case.call(base_url=base, timeout=30)
                total += 1
                if response.status_code >= 500 and response.status_code != 503:
                    errors.append(f"{case.path} {case.body!r:.200} -> {response.status_code} {response.text:.200}")

            send()
    print(f"\n[client episodes] fuzz: {total} HTTP cases, {len(errors)} server errors")
    assert total >= 300 and not errors, errors[:5]


FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_obs = st.lists(_floats, max_size=6)


def test_generated_grpc_messages_get_no_internal_error(client_run):
    from serving.proto import evolve_pb2 as pb
    from serving.proto import evolve_pb2_grpc

    meta, faults, codes = (("application", "cartpole"), ("x-evolve-client", "fuzz")), [], set()
    steps = st.builds(pb.EpisodeStep, episode_id=st.sampled_from(["fuzz-1", "nobody", ""]),
                      step=st.none() | st.integers(-2, 5), reward=st.none() | _floats)

    with grpc.insecure_channel(client_run["grpc"]) as channel:
        stub = evolve_pb2_grpc.EvolvePoliciesStub(channel)
        stub.StartEpisodes(pb.StartEpisodesRequest(episode_ids=["fuzz-1"]), metadata=meta, timeout=30)

        def call(rpc, message):
            try:
                getattr(stub, rpc)(message, metadata=meta, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            codes.add(code)
            if code in FAULTS:
                faults.append((rpc, str(message)[:200], code))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(obs=st.lists(_obs, max_size=4), episodes=st.lists(steps, max_size=4))
        def act(obs, episodes):
            call("Act", pb.ActRequest(obs=[pb.Observation(values=o) for o in obs], episodes=episodes))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(ends=st.lists(st.builds(pb.EpisodeEnd, episode_id=st.sampled_from(["fuzz-1", "nobody"]),
                                       reward=st.none() | _floats, terminated=st.booleans(), truncated=st.booleans(),
                                       final_obs=st.none() | st.builds(pb.Observation, values=_obs),
                                       step=st.none() | st.integers(-1, 5)), max_size=3))
        def end(ends):
            call("EndEpisodes", pb.EndEpisodesRequest(episodes=ends))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(actions=st.lists(st.builds(pb.LoggedAction, episode_id=st.sampled_from(["fuzz-1", "nobody"]),
                                          step=st.none() | st.integers(-1, 5), reward=st.none() | _floats,
                                          obs=st.builds(pb.Observation, values=_obs),
                                          action=st.none() | st.integers(-3, 3),
                                          propensity=st.none() | _floats), max_size=3),
               count=st.integers(-2, 2000))
        def log_and_start(actions, count):
            call("LogAction", pb.LogActionRequest(actions=actions))
            call("StartEpisodes", pb.StartEpisodesRequest(count=count))

        act()
        end()
        log_and_start()
    print(f"\n[client episodes] gRPC fuzz: codes {sorted(c.name for c in codes)}")
    assert not faults, faults[:5]
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes  # the messages reached the app


def test_a_killed_client_loses_no_acknowledged_step(client_run):
    base, tmp = client_run["base"], client_run["tmp"]
    acks = tmp / "acks.txt"
    first = subprocess.Popen([sys.executable, str(CLIENT), base, "--acks", str(acks), "--episodes", "20",
                              "--prefix", "one", "--hang-after-steps", "5"], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "one-hang 4" in acks.read_text() if acks.exists() else False, 150,
                   "20 episodes and 5 steps of the 21st")
    finally:
        first.kill()
        first.wait(timeout=30)
    second = subprocess.run([sys.executable, str(CLIENT), base, "--acks", str(acks), "--episodes", "3",
                             "--prefix", "two"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    killed = wait_until(lambda: (v := httpx.get(f"{base}/episodes/one-hang", timeout=10).json())["state"] == "truncated"
                        and v, TTL_S + 30, "the killed episode truncated")
    assert "no call for" in killed["reason"] and killed["length"] == 5
    assert httpx.post(f"{base}/act", json={"obs": [0.0] * 4, "episode_id": "one-hang", "step": 6, "reward": 1.0},
                      timeout=10).status_code == 410

    acked = [tuple(line.split()) for line in acks.read_text().splitlines()]
    assert len(acked) == len(set(acked)) and len({e for e, _ in acked}) == 24
    out = tmp / "export.parquet"
    assert evolve(["replay", "export", str(client_run["run"]), "cartpole", str(out)]) == 0
    rows = pq.read_table(out).to_pylist()
    ids = [r["id"] for r in rows if r["source"] == "client"]
    assert len(ids) == len(set(ids)), "a client step stored twice"
    stored = set(ids)
    missing = [f"cartpole:{e}:{s}" for e, s in acked if f"cartpole:{e}:{s}" not in stored]
    assert not missing, f"{len(missing)} acknowledged steps not in the export, e.g. {missing[:3]}"
    ends = [r for r in rows if r["id"].startswith("cartpole:one-") and (r["terminated"] or r["truncated"])]
    assert len(ends) == 20  # each finished episode's last step; the killed one has none

