"""evolve_client.PolicyClient against an in-process fake of the client-episode API (fake_policy_api.py)."""

from __future__ import annotations

import math

import httpx
import pytest

from evolve_client import PolicyClient, PolicyClientError
from evolve_client.policy_client import policy_url
from tests.unit.fake_policy_api import FakePolicyAPI, cartpole_rule

OBS = [[0.1, 0.2, -0.3, 0.05], [0.0, -0.1, 0.2, 0.1], [0.3, 0.0, 0.01, -0.4], [-0.2, 0.1, 0.1, 0.2]]


@pytest.fixture
def fake() -> FakePolicyAPI:
    return FakePolicyAPI()


def client_of(fake: FakePolicyAPI, **kw) -> tuple[PolicyClient, list[float]]:
    """A client on the fake and the pauses it took (recorded, not slept)."""
    pauses: list[float] = []
    kw.setdefault("max_retries", 3)
    return PolicyClient("http://fake/v1/policies/cartpole", transport=fake.transport, sleep=pauses.append, **kw), pauses


def test_the_url_is_the_servers_root_with_a_policy_or_the_policys_own():
    assert policy_url("http://h:8000", "cartpole") == ("http://h:8000/v1/policies/cartpole", "cartpole")
    assert policy_url("https://h/v1/policies/cartpole/", None) == ("https://h/v1/policies/cartpole", "cartpole")
    assert policy_url("http://h/v1/policies/cartpole", "cartpole")[1] == "cartpole"
    with pytest.raises(ValueError, match="server root"):
        policy_url("http://h:8000", None)
    with pytest.raises(ValueError, match="names policy 'cartpole' but policy_id is 'other'"):
        policy_url("http://h/v1/policies/cartpole", "other")
    with pytest.raises(ValueError, match="http"):
        policy_url("h:8000", "cartpole")


def test_an_episode_is_stored_step_by_step_with_each_reward_sent_with_the_next_call(fake):
    client, _ = client_of(fake)
    eid = client.start_episode("game-1")
    actions = []
    for t, obs in enumerate(OBS):
        actions.append(client.get_action(eid, obs))
        client.log_returns(eid, 1.0)
        client.log_returns(eid, 0.5 * t)  # rewards of one step add up
    answer = client.end_episode(eid, OBS[0], terminated=True)
    assert actions == [cartpole_rule(o) for o in OBS]
    assert answer == {"episode_id": "game-1", "return": 4.0 + 0.5 * 6, "length": 4}
    assert fake.episodes[eid].rewards == {0: 1.0, 1: 1.5, 2: 2.0, 3: 2.5}
    acts = [body for method, route, body, _ in fake.requests if route == "act"]
    assert [b["step"] for b in acts] == [0, 1, 2, 3]
    assert "reward" not in acts[0] and [b["reward"] for b in acts[1:]] == [1.0, 1.5, 2.0]
    assert client.episode(eid) == {"episode_id": "game-1", "state": "terminated", "reason": None, "length": 4,
                                   "return": 7.0}
    with pytest.raises(ValueError, match="not open in this client"):
        client.get_action(eid, OBS[0])


def test_a_step_without_log_returns_is_reported_with_reward_zero(fake):
    client, _ = client_of(fake)
    eid = client.start_episode()
    client.get_action(eid, OBS[0])
    client.get_action(eid, OBS[1])
    assert fake.episodes[eid].rewards == {0: 0.0}


def test_start_episode_without_an_id_names_it_so_a_retry_cannot_open_two(fake):
    client, _ = client_of(fake)
    fake.fault("episodes", drop=True, applied=True)  # opened, but the answer is lost
    eid = client.start_episode()
    assert list(fake.episodes) == [eid] and fake.count("episodes") == 2


def test_starting_by_count_is_retried_on_refusals_but_not_after_a_lost_answer(fake):
    client, pauses = client_of(fake)
    fake.fault("episodes", status=503, retry_after=2)
    assert client.start_episodes(3) == ["srv-1", "srv-2", "srv-3"]
    assert pauses == [2.0]
    fake.fault("episodes", drop=True, applied=True)
    with pytest.raises(PolicyClientError, match="not idempotent") as info:
        client.start_episodes(2)
    assert info.value.tries == 1 and fake.count("episodes") == 3
    assert len(fake.episodes) == 5  # why: the server did open two episodes the client never heard of
    fake.fault("episodes", drop=True)  # never reached the server: safe even by count
    assert client.start_episodes(1) == ["srv-6"]
    with pytest.raises(ValueError, match="not both"):
        client.start_episodes(2, episode_ids=["a", "b"])


def test_a_503_with_retry_after_is_retried_after_the_pause_it_asks_for(fake):
    client, pauses = client_of(fake)
    eid = client.start_episode("e")
    fake.fault("act", status=503, retry_after=1.5)
    fake.fault("act", status=429, retry_after=0.25)
    assert client.get_action(eid, OBS[0]) == cartpole_rule(OBS[0])
    assert pauses == [1.5, 0.25] and fake.count("act") == 3 and client.retries == 2
    assert client.step_of(eid) == 1


def test_a_dropped_connection_after_the_server_applied_the_step_never_counts_it_twice(fake):
    client, _ = client_of(fake)
    eid = client.start_episode("e")
    client.get_action(eid, OBS[0])
    client.log_returns(eid, 1.0)
    fake.fault("act", drop=True, applied=True)
    fake.fault("act", status=504, applied=True)
    assert client.get_action(eid, OBS[1]) == cartpole_rule(OBS[1])
    client.log_returns(eid, 2.0)
    fake.fault("episodes/end", status=502, applied=True)  # ended, answer lost: ending again with the same report
    assert client.end_episode(eid, OBS[2]) == {"episode_id": "e", "return": 3.0, "length": 2}
    assert fake.count("act") == 4 and fake.count("episodes/end") == 2
    assert dict(fake.stored) == {("e", 0): 1, ("e", 1): 1}


def test_giving_up_says_why_and_how_often_and_leaves_the_episode_as_it_was(fake):
    client, pauses = client_of(fake, max_retries=3, backoff_s=0.1, max_backoff_s=0.3)
    eid = client.start_episode("e")
    client.get_action(eid, OBS[0])
    client.log_returns(eid, 1.0)
    fake.fault("act", status=502, times=4)
    with pytest.raises(PolicyClientError) as info:
        client.get_action(eid, OBS[1])
    message = str(info.value)
    assert "POST act: gave up after 4 tries" in message and "502" in message and "fake: busy" in message
    assert (info.value.status, info.value.detail, info.value.tries) == (502, "fake: busy", 4)
    assert pauses == [0.1, 0.2, 0.3]  # growing, bounded
    assert client.step_of(eid) == 1
    assert client.get_action(eid, OBS[1]) == cartpole_rule(OBS[1])  # the same call again goes through
    assert fake.episodes[eid].rewards == {0: 1.0}


def test_an_unreachable_server_is_given_up_on_naming_it():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = PolicyClient("http://nowhere:1", policy_id="p", transport=httpx.MockTransport(refuse), max_retries=2,
                          sleep=lambda s: None)
    with pytest.raises(PolicyClientError, match=r"POST episodes: gave up after 3 tries; the last: unreachable "
                                                r"\(ConnectError: connection refused\)"):
        client.start_episode("e")


def test_a_step_reported_again_with_another_reward_is_refused_at_once_with_the_servers_reason(fake):
    client, _ = client_of(fake, max_retries=1)
    eid = client.start_episode("e")
    client.get_action(eid, OBS[0])
    client.log_returns(eid, 1.0)
    fake.fault("act", drop=True, applied=True, times=2)  # step 1 stored with reward 1.0; both answers lost
    with pytest.raises(PolicyClientError, match="gave up after 2 tries"):
        client.get_action(eid, OBS[1])
    client.log_returns(eid, 1.0)  # the application adds to a reward the server already holds
    sent = fake.count("act")
    with pytest.raises(PolicyClientError, match="409 reward: step 0 was reported with reward 1.0") as info:
        client.get_action(eid, OBS[1])
    assert info.value.status == 409 and fake.count("act") == sent + 1


@pytest.mark.parametrize("status", [404, 410])
def test_an_unknown_or_expired_episode_is_refused_at_once(fake, status):
    client, _ = client_of(fake)
    eid = client.start_episode("e")
    if status == 404:
        del fake.episodes[eid]
    else:
        fake.expire(eid)
    with pytest.raises(PolicyClientError, match=f"POST act: {status} episode_id: ") as info:
        client.get_action(eid, OBS[0])
    assert info.value.tries == 1 and fake.count("act") == 1


def test_a_server_error_is_not_retried(fake):
    client, _ = client_of(fake)
    eid = client.start_episode("e")
    fake.fault("act", status=500)
    with pytest.raises(PolicyClientError, match="POST act: 500 fake: busy"):
        client.get_action(eid, OBS[0])
    assert fake.count("act") == 1


def test_get_actions_asks_for_a_batch_in_one_request(fake):
    client, _ = client_of(fake)
    ids = client.start_episodes(episode_ids=["a", "b", "c"])
    assert client.get_actions(ids, OBS[:3]) == [cartpole_rule(o) for o in OBS[:3]]
    client.log_returns("a", 1.0)
    client.log_returns("c", 3.0)
    assert client.get_actions(["c", "a"], OBS[2:4]) == [cartpole_rule(o) for o in OBS[2:4]]
    first, second = [body for _, route, body, _ in fake.requests if route == "act"]
    assert first["steps"] == [0, 0, 0] and first["rewards"] == [None, None, None]
    assert second == {"obs": OBS[2:4], "episode_ids": ["c", "a"], "steps": [1, 1], "rewards": [3.0, 1.0]}
    assert client.last_version == [7, 7] and client.last_propensity == [0.5, 0.5]
    with pytest.raises(ValueError, match="repeat"):
        client.get_actions(["a", "a"], OBS[:2])
    with pytest.raises(ValueError, match="one observation per episode"):
        client.get_actions(["a", "b"], OBS[:3])
    with pytest.raises(ValueError, match="finite"):
        client.get_actions(["a"], [[0.0, math.nan, 0.0, 0.0]])
    assert fake.count("act") == 2


def test_the_version_of_each_row_is_kept_when_the_server_answers_per_row():
    fake = FakePolicyAPI(version_per_row=True)
    client, _ = client_of(fake)
    ids = client.start_episodes(episode_ids=["a", "b"])
    client.get_actions(ids, OBS[:2])
    assert client.last_version == [7, 7]


def test_log_action_reports_the_applications_own_choice(fake):
    client, _ = client_of(fake)
    eid = client.start_episode("e")
    client.log_action(eid, OBS[0], 1, propensity=0.8)
    client.log_returns(eid, 2.0)
    client.log_action(eid, OBS[1], 0)
    assert fake.episodes[eid].served == {0: 1, 1: 0} and fake.episodes[eid].rewards == {0: 2.0}
    with pytest.raises(PolicyClientError, match="422 propensities\\[0\\]: must be in \\(0, 1\\]"):
        client.log_action(eid, OBS[2], 1, propensity=1.5)
    assert client.step_of(eid) == 2


def test_log_returns_needs_a_step_and_a_finite_reward(fake):
    client, _ = client_of(fake)
    eid = client.start_episode("e")
    with pytest.raises(ValueError, match="no step yet"):
        client.log_returns(eid, 1.0)
    client.get_action(eid, OBS[0])
    with pytest.raises(ValueError, match="finite"):
        client.log_returns(eid, math.inf)


def test_end_episodes_ends_a_batch_and_checks_the_flags_first(fake):
    client, _ = client_of(fake)
    ids = client.start_episodes(episode_ids=["a", "b"])
    client.get_actions(ids, OBS[:2])
    client.log_returns("a", 1.0)
    client.log_returns("b", 2.0)
    with pytest.raises(ValueError, match="exactly one of terminated, truncated"):
        client.end_episodes(ids, OBS[2:4], terminated=[True, True], truncated=[False, True])
    with pytest.raises(ValueError, match="'b' is truncated: its final observation is needed"):
        client.end_episodes(ids, [OBS[2], None], terminated=[True, False], truncated=[False, True])
    assert fake.count("episodes/end") == 0
    answers = client.end_episodes(ids, [None, OBS[3]], terminated=[True, False], truncated=[False, True])
    assert answers == [{"episode_id": "a", "return": 1.0, "length": 1}, {"episode_id": "b", "return": 2.0, "length": 1}]
    assert (fake.episodes["a"].state, fake.episodes["b"].state) == ("terminated", "truncated")
    assert fake.requests[-1][2]["steps"] == [0, 0]


def test_the_key_and_the_client_name_go_with_every_request():
    fake = FakePolicyAPI(key="sekrit")
    client, _ = client_of(fake, key="sekrit", client_name="game-7")
    client.start_episode("e")
    headers = fake.requests[-1][3]
    assert headers["authorization"] == "Bearer sekrit" and headers["x-evolve-client"] == "game-7"
    anonymous, _ = client_of(fake)
    with pytest.raises(PolicyClientError, match="401 authorization: a valid API key is needed"):
        anonymous.start_episode("f")
