"""A gate stage is one class and its registration: this module defines one, and nothing else changes.

`slower` refuses a candidate that spends more than `margin` times live's CPU time answering the
logged inputs of live's evidence (CPU time, not wall time: a busy machine slows both sides alike).  It asks only what every policy kind gives (the inputs each unit of evidence answered,
`kind.answer`), has settings of its own (`gate.slower`), and works for the text classifier and the
RL policy alike.  The slow candidate here is slowed on purpose (every call computes its answer
`REPEATS` times), so the verdict does not depend on how fast the machine is: a margin of 5 is far
from both sides.
"""

from __future__ import annotations

import time
from collections import deque

import pytest
from pydantic import Field

from core.config.base import Section
from core.config.gate import GateSection, rl_gate
from core.storage.registry import PolicyRegistry
from gate import Gate, GateError, Stage, Verdict, register_stage
from gate.kinds.q_policy import QPolicyKind
from gate.kinds.text import TextKind
from tests.unit.test_gate import P, FakePublisher, _start, feedback, world  # noqa: F401 (world: a fixture)
from tests.unit.test_rl_gate import EXPLORE, SPEC, _balancer, _play

REPEATS = 30


class SlowerSettings(Section):
    margin: float = Field(default=3.0, gt=1)  # refused beyond this many times live's CPU time
    min_inputs: int = Field(default=20, ge=1)
    inputs: int = Field(default=200, ge=1)  # the newest logged inputs kept
    repeats: int = Field(default=3, ge=1)  # each side timed this often; the fastest counts


@register_stage("slower", settings=SlowerSettings, needs=("inputs",))
class NotSlower(Stage):
    def __init__(self, policy, settings: SlowerSettings):
        super().__init__(policy, settings)
        self.inputs: deque = deque(maxlen=settings.inputs)

    def feed(self, evidence) -> int:
        new = [x for ev in evidence if ev.inputs for x in ev.inputs]
        with self.lock:
            self.inputs.extend(new)
        return len(new)

    def judge(self, candidate) -> Verdict:
        cfg = self.settings
        with self.lock:
            inputs = list(self.inputs)
        if len(inputs) < cfg.min_inputs:
            return Verdict("refuse", f"not enough logged inputs to time: {len(inputs)} of {cfg.min_inputs}")
        live = self._seconds(self.policy.model(candidate.live), inputs)
        cand = self._seconds(candidate.model, inputs)
        evidence = {"candidate_s": round(cand, 4), "live_s": round(live, 4), "inputs": len(inputs)}
        if cand > cfg.margin * live:
            return Verdict("refuse", f"answers {cand / max(live, 1e-9):.1f}x slower than live (margin {cfg.margin:g}x)",
                           evidence)
        return Verdict("promote", f"answers within {cfg.margin:g}x of live's time", evidence)

    def _seconds(self, model, inputs) -> float:
        times = []
        for _ in range(self.settings.repeats):
            t0 = time.process_time()
            self.policy.kind.answer(model, inputs)
            times.append(time.process_time() - t0)
        return min(times)


class Slowed:
    """A model that answers as the one it wraps, computing each answer REPEATS times."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        found = getattr(self.model, name)
        if name not in ("predict_proba", "q_values"):
            return found

        def slow(*args, **kwargs):
            for _ in range(REPEATS - 1):
                found(*args, **kwargs)
            return found(*args, **kwargs)

        return slow


def slowed(kind_type):
    class Kind(kind_type):
        """A version whose files hold `slow` is slowed."""

        def load(self, weights, files):
            model = super().load(weights, files)
            return Slowed(model) if "slow" in files else model

    return Kind


def test_the_stage_refuses_a_slow_text_classifier_and_passes_an_equal_one(tmp_path, world):
    registry, events = PolicyRegistry(tmp_path / "registry"), []
    kind = slowed(TextKind)(world["heldout"])
    cfg = GateSection(stages=["heldout", "slower"], slower={"margin": 5, "min_inputs": 20})
    gate = Gate(registry, kind, cfg, publisher=FakePublisher(registry), emit=lambda k, **f: events.append((k, f)))
    _start(gate, world)
    early = gate.submit(P, world["base"], world["files"], {})
    assert early["decision"] == "refuse" and "not enough logged inputs" in early["reason"]
    texts = [t for t, _ in world["heldout"][:40]]
    assert gate.evidence(P, [feedback(1, True, text=t) for t in texts])["taken"]["slower"] == 40
    slow = gate.submit(P, world["base"], {**world["files"], "slow": b"1"}, {})
    assert slow["decision"] == "refuse" and "slower than live" in slow["reason"], slow["reason"]
    (timed,) = [s for s in registry.get(P, slow["version"]).gate["stages"] if s["stage"] == "slower"]
    assert timed["candidate_s"] > 5 * timed["live_s"] and timed["inputs"] == 40
    same = gate.submit(P, world["base"], world["files"], {})
    assert same["decision"] == "promote", same["reason"]
    assert [s["stage"] for s in registry.get(P, same["version"]).gate["stages"]] == ["heldout", "slower"]


def test_the_same_stage_judges_an_rl_policy(tmp_path):
    registry = PolicyRegistry(tmp_path / "registry")
    kind = slowed(QPolicyKind)(SPEC.to_dict(), EXPLORE, (0.0, 500.0))
    gate = Gate(registry, kind, rl_gate({"stages": ["slower"], "slower": {"margin": 5}}),
                publisher=FakePublisher(registry))
    assert gate.submit(P, _balancer(), wait=False)["decision"] == "initial"
    for ep in _play({1: _balancer()}, 3, seed=0):
        gate.evidence(P, [{"type": "episode", **ep}])
    slow = gate.submit(P, _balancer(), {"slow": b"1"}, wait=False)
    assert slow["decision"] == "refuse" and "slower than live" in slow["reason"], slow["reason"]
    same = gate.submit(P, _balancer(gain=2.0), wait=False)
    assert same["decision"] == "promote" and registry.latest(P, "live").version == same["version"]


def test_its_settings_are_checked_and_an_unknown_stage_is_named(tmp_path):
    kind, registry = TextKind([("text", 0)]), PolicyRegistry(tmp_path / "registry")
    with pytest.raises(GateError, match="gate.slower.margin"):
        Gate(registry, kind, GateSection(stages=["slower"], slower={"margin": 0.5}), publisher=FakePublisher(registry))
    with pytest.raises(GateError, match="no stage named 'faster'"):
        Gate(registry, kind, GateSection(stages=["faster"]), publisher=FakePublisher(registry))
    with pytest.raises(GateError, match="gate.slowr: no such key"):
        Gate(registry, kind, GateSection(stages=["heldout"], slowr={"margin": 5}), publisher=FakePublisher(registry))
