"""The gate of an RL policy: CartPole policies judged on /act episodes (off-policy, then a sticky canary), without Ray.

Policies are hand-built Q-networks: `balancer` pushes toward the pole's lean
(Q[right] - Q[left] = angle + 0.5 * angular velocity, which keeps CartPole up
for hundreds of steps), `poisoned` is the same network with its two outputs
swapped (the pole falls in about ten steps).  Episodes are played here the
way serving/policy_server.py answers /act: Q-values through the serving
exploration, canary rows chosen by serving/stage_follower.py's sticky hash.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from core.stats.exploration import ExplorationSection, choose, serving_distribution
from core.storage.registry import PolicyRegistry
from core.config.gate import rl_gate
from core.models.q import spec_for_env
from core.models.q_policy import QPolicy
from core.data.hashing import stable_unit_hash
from gate import Gate
from gate.kinds.q_policy import QPolicyKind
from tests.unit.test_gate import FakePublisher

P = "cart"
EXPLORE = ExplorationSection(kind="epsilon", epsilon=0.1)
SPEC = spec_for_env("CartPole-v1", "dqn", [2])


def _balancer(flip: bool = False, gain: float = 1.0) -> dict[str, torch.Tensor]:
    w = torch.tensor([0.0, 0.0, 1.0, 0.5]) * gain  # z = angle + 0.5 * angular velocity
    weights = {"net.0.weight": torch.stack([w, -w]), "net.0.bias": torch.zeros(2),  # relu(z), relu(-z)
               "net.2.weight": torch.tensor([[-1.0, 1.0], [1.0, -1.0]]), "net.2.bias": torch.zeros(2)}
    if flip:
        weights["net.2.weight"] = weights["net.2.weight"].flip(0)
    return weights


def _play(arms: dict[int, dict], episodes: int, seed: int, canary: int | None = None,
          fraction: float = 0.0) -> list[dict]:
    """Episodes logged by clients: each under a client key, answered by the canary version when the
    key's hash says so (as the replicas route), else by the lowest (live) version."""
    policies = {v: QPolicy(SPEC, w, v) for v, w in arms.items()}
    live = min(arms)
    rng, env, out = np.random.default_rng(seed), gym.make("CartPole-v1"), []
    for i in range(episodes):
        key = f"client-{seed}-{i}"
        version = canary if canary is not None and stable_unit_hash(f"{key}#canary-v{canary}") < fraction else live
        obs, _ = env.reset(seed=seed * 1000 + i)
        log = {"obs": [], "actions": [], "propensities": [], "rewards": [], "version": version, "client": key}
        done = False
        while not done:
            dist = serving_distribution(policies[version].q_values(obs[None]), EXPLORE, log_probs=False)
            a, mu = choose(dist, rng)
            log["obs"].append(obs.tolist()), log["actions"].append(int(a[0])), log["propensities"].append(float(mu[0]))
            obs, r, term, trunc, _ = env.step(int(a[0]))
            log["rewards"].append(float(r))
            done = term or trunc
        out.append(log)
    return out


class RLGate(Gate):
    """The calls an RL loop makes: the learner's publish (a version, or None), the clients' episodes."""

    def publish(self, policy_id, weights):
        return self.submit(policy_id, weights, wait=False)["version"]

    def episode(self, policy_id, episode):
        self.evidence(policy_id, [{"type": "episode", **episode}])

    def unservable(self, policy_id, version, reason):
        done = self.evidence(policy_id, [{"type": "unservable", "version": version, "reason": reason}])["unservable"]
        return done[0] if done else None

    def canary(self):
        return self.stage(P, "canary")


def _gate(tmp_path, stages, **canary) -> tuple[RLGate, PolicyRegistry, FakePublisher, list]:
    registry = PolicyRegistry(tmp_path / "registry")
    publisher, events = FakePublisher(registry), []
    cfg = rl_gate({"stages": stages, "ope": {"min_rows": 20, "bootstrap_samples": 100},
                   "canary": {"min_requests": 10, "max_requests": 40, **canary}})
    gate = RLGate(registry, QPolicyKind(SPEC.to_dict(), EXPLORE, (0.0, 500.0)), cfg, publisher=publisher,
                  emit=lambda kind, **f: events.append((kind, f)))
    return gate, registry, publisher, events


def test_ope_refuses_before_it_has_evidence_and_passes_a_copy_of_live(tmp_path):
    gate, registry, publisher, _ = _gate(tmp_path, ["ope"])
    assert gate.publish(P, _balancer()) == 1 and registry.latest(P, "live").version == 1  # the first goes live
    early = gate.publish(P, _balancer())
    assert registry.get(P, early).gate["decision"] == "refuse"
    assert "not enough off-policy evidence" in registry.get(P, early).gate["reason"]
    for ep in _play({1: _balancer()}, 25, seed=0):
        gate.episode(P, ep)
    same = gate.publish(P, _balancer())
    ope = registry.get(P, same).gate["stages"][0]
    assert registry.latest(P, "live").version == same, ope
    assert ope["verdict"] == "not worse" and ope["ess"] == pytest.approx(25, abs=0.01)  # every ratio is 1
    assert ope["candidate"] == pytest.approx(ope["live"], abs=1e-9)


def test_a_poisoned_candidate_never_goes_live_and_its_canary_aborts(tmp_path):
    gate, registry, publisher, events = _gate(tmp_path, ["ope", "canary"])
    gate.publish(P, _balancer())
    for ep in _play({1: _balancer()}, 30, seed=1):
        gate.episode(P, ep)
    bad = gate.publish(P, _balancer(flip=True))
    record = registry.get(P, bad)
    ope = record.gate["stages"][0]  # weights collapse on a policy that disagrees everywhere: no verdict
    assert record.gate["decision"] == "canary" and ope["verdict"] == "inconclusive", record.gate
    assert ope["candidate"] < ope["live"]
    assert registry.stages(P)["canary"]["version"] == bad
    assert gate.publish(P, _balancer()) is None  # one experiment at a time
    exposed = 0
    for seed in range(2, 30):
        for ep in _play({1: _balancer(), bad: _balancer(flip=True)}, 20, seed=seed, canary=bad, fraction=0.2):
            exposed += ep["version"] == bad
            gate.episode(P, ep)
        if gate.canary() is None:
            break
    record = registry.get(P, bad)
    assert registry.stages(P)["canary"]["version"] is None  # every client back on live
    canary = record.gate["stages"][-1]
    assert canary["stage"] == "canary" and canary["candidate_requests"] <= exposed <= 40
    assert [k for k, _ in events].count("canary_ended") == 1
    assert record.gate["decision"] == "refuse", record.gate
    assert registry.latest(P, "live").version == 1 and publisher.restored == []


def test_an_equal_candidate_is_promoted_through_the_canary(tmp_path):
    gate, registry, publisher, events = _gate(tmp_path, ["ope", "canary"], max_requests=15, fraction=0.5)
    gate.publish(P, _balancer())
    for ep in _play({1: _balancer()}, 25, seed=3):
        gate.episode(P, ep)
    cand = gate.publish(P, _balancer(gain=2.0))  # the same actions everywhere: the same policy
    assert registry.get(P, cand).gate["decision"] == "canary"
    for seed in range(4, 40):
        for ep in _play({1: _balancer(), cand: _balancer(gain=2.0)}, 20, seed=seed, canary=cand, fraction=0.5):
            gate.episode(P, ep)
        if gate.canary() is None:
            break
    record = registry.get(P, cand)
    assert record.gate["decision"] == "promote", record.gate
    assert [s["stage"] for s in record.gate["stages"]] == ["ope", "canary"]
    assert registry.latest(P, "live").version == cand and publisher.restored[-1][0] == cand
    assert sum(d["decision"] == "promote" for d in gate.summary()["promotions"]) == 1
    assert any(k == "gate_decision" and f["decision"] == "promote" for k, f in events)


def test_a_canary_keeps_each_client_on_one_side(tmp_path):
    from serving.stage_follower import StageFollower

    gate, registry, _, _ = _gate(tmp_path, ["canary"])
    gate.publish(P, _balancer())
    cand = gate.publish(P, _balancer(gain=3.0))
    follower = StageFollower(str(tmp_path / "registry"), P, 0.3, lambda w, f, v: QPolicy(SPEC, w, v))
    assert follower.refresh() == cand and follower.current.version == cand
    keys = [f"k{i}" for i in range(400)]
    first = follower.route(keys)
    assert (follower.route(keys) == first).all() and 0.2 < first.mean() < 0.4
    registry.clear(P, "canary")
    assert follower.refresh() is None and not follower.route(keys).any()


def test_a_canary_undecided_when_the_run_ends_is_cleared_and_refused(tmp_path):
    gate, registry, _, events = _gate(tmp_path, ["canary"])
    gate.publish(P, _balancer())
    cand = gate.publish(P, _balancer(gain=2.0))
    assert registry.stages(P)["canary"]["version"] == cand
    gate.close(P)
    record = registry.get(P, cand).gate
    assert registry.stages(P)["canary"]["version"] is None and record["decision"] == "refuse"
    assert "the run ended before the canary decided" in record["reason"]


def _nan(weights: dict) -> dict:
    weights = {k: v.clone() for k, v in weights.items()}
    weights["net.2.weight"][0, 0] = float("nan")
    return weights


def test_a_candidate_that_cannot_answer_is_refused_and_not_stored(tmp_path):
    gate, registry, _, events = _gate(tmp_path, ["ope"])
    assert gate.publish(P, _nan(_balancer())) is None
    assert registry.versions(P) == [] and "non-finite weights in 'net.2.weight'" in events[-1][1]["reason"]
    live = gate.publish(P, _balancer())
    huge = {k: torch.full_like(v, 1e30) for k, v in _balancer().items()}  # finite, but Q overflows float32
    assert gate.publish(P, huge) is None and registry.versions(P) == [live]
    kind, said = events[-1]
    assert kind == "gate_decision" and said["decision"] == "refuse" and "all-zero observation" in said["reason"]
    assert gate.summary()["refused"] == 2 and registry.latest(P, "live").version == live


def test_an_unservable_live_version_is_rolled_back_once(tmp_path):
    gate, registry, publisher, events = _gate(tmp_path, ["ope"])
    first = gate.publish(P, _balancer())
    assert gate.unservable(P, first, "its Q-values are not finite")["decision"] == "none"  # nothing to go back to
    assert [k for k, _ in events][-1] == "rollback_impossible"
    for ep in _play({first: _balancer()}, 25, seed=0):
        gate.episode(P, ep)
    second = gate.publish(P, _balancer())
    assert registry.latest(P, "live").version == second
    done = gate.unservable(P, second, "non-finite weights in 'net.0.weight'")
    assert done["decision"] == "rollback" and done["to"] == first
    assert registry.latest(P, "live").version == first and publisher.restored[-1][0] == first
    assert gate.unservable(P, second, "again, from another replica") is None
    said = {k: f for k, f in events}
    assert said["version_unservable"]["version"] == second
    assert said["rollback"]["from"] == second and said["rollback"]["trigger"] == "unservable"
    assert gate.summary()["unservable"] == 2 and gate.summary()["last_decision"]["decision"] == "rollback"


def test_an_unservable_canary_is_aborted(tmp_path):
    gate, registry, publisher, events = _gate(tmp_path, ["canary"])
    live = gate.publish(P, _balancer())
    cand = gate.publish(P, _balancer(gain=2.0))
    assert registry.stages(P)["canary"]["version"] == cand
    assert gate.unservable(P, cand, "its Q-values are not finite")["decision"] == "abort"
    record = registry.get(P, cand).gate
    assert registry.stages(P)["canary"]["version"] is None and record["decision"] == "refuse"
    assert "unservable" in record["reason"] and registry.latest(P, "live").version == live
    assert gate.canary() is None and publisher.restored == []


def test_a_stage_list_the_kind_cannot_run_is_refused_before_ray_starts():
    from cluster.errors import UserError
    from cluster.gate_actor import check_gate

    check_gate(rl_gate({"stages": ["ope", "canary"]}), "q_policy", "rl")
    with pytest.raises(UserError, match=r"rl\.gate\.stages: 'shadow' needs shadow evidence, which a q_policy"):
        check_gate(rl_gate({"stages": ["ope", "shadow"]}), "q_policy", "rl")
    with pytest.raises(UserError, match="`ope` .* cannot come after `canary`"):
        check_gate(rl_gate({"stages": ["canary", "ope"]}), "q_policy", "rl")
    with pytest.raises(UserError, match="'heldout' needs heldout evidence"):
        check_gate(rl_gate({"stages": ["heldout"]}), "q_policy", "rl")
