"""The stage protocol: a small class with one role, its own state and settings, registered by name.

    feed(evidence)   take what it uses of new live evidence (gate/evidence.py); returns how many
    judge(candidate) Verdict: promote | refuse, or pending for a stage on live traffic, which
                     starts its experiment and decides later
    poll()           a pending stage's verdict once its evidence suffices (None: not yet)
    busy()           why no other candidate may start now (one experiment on the traffic at a time)
    end(reason)      the experiment in flight ends from outside (the run ends, the candidate cannot
                     answer): its verdict, a refusal
    on_live(version) another version is live now
    figures()        what `summary()` and `/v1/models` show of it

`@register_stage("name", settings=Section)` makes a class a stage: `gate.stages` may then name it,
and `gate.<name>` is its section.  A stage sees its policy through `PolicyView` (gate/policy.py):
the kind's adapter, what is live, stored models and their held-out scores.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ValidationError

from core.config.gate import GateSection
from gate.evidence import Evidence
from gate.pointer import GateError

# how far a stage's candidate reaches live traffic: stages run in this order
OFFLINE, BESIDE_LIVE, ON_LIVE = 0, 1, 2
EXPOSURE = {OFFLINE: "offline", BESIDE_LIVE: "beside live traffic (clients never see it)",
            ON_LIVE: "on live traffic (clients get its answers)"}
GUARD = "rollback"  # the stage that watches live on every gate; never in `gate.stages`


@dataclass(frozen=True)
class Verdict:
    decision: str  # promote | refuse | pending
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """A learner's version on its way through the stages."""

    policy_id: str
    weights: dict = field(repr=False)
    files: dict = field(repr=False)
    metadata: dict = field(repr=False)
    model: Any = field(repr=False)  # the kind's loaded model
    correct: np.ndarray | None = field(default=None, repr=False)  # on the kind's held-out set
    live: int | None = None  # the live version it is judged against
    version: int | None = None  # once stored in the registry
    live_accuracy: float | None = None  # live's on the held-out set
    measured: Any = None  # the held-out comparison with live (core/stats/paired.py GateResult)
    meta: dict = field(default_factory=dict, repr=False)  # its registry metadata; meta["gate"]: the lineage record
    t0: float = field(default_factory=time.perf_counter)

    @property
    def gate(self) -> dict[str, Any]:
        return self.meta.setdefault("gate", {"stages": []})

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else float(self.correct.mean())


class Stage:
    name: ClassVar[str] = ""
    settings_type: ClassVar[type[BaseModel] | None] = None
    exposure: ClassVar[int] = OFFLINE
    needs: ClassVar[frozenset[str]] = frozenset()  # what the policy kind must give (Kind.gives)

    def __init__(self, policy: Any, settings: Any):
        self.policy, self.settings = policy, settings
        self.lock = threading.Lock()  # feed runs on the evidence thread while judge runs on another

    def feed(self, evidence: Sequence[Evidence]) -> int:
        return 0

    def judge(self, candidate: Candidate) -> Verdict:
        raise NotImplementedError(f"stage {self.name!r} judges no candidate")

    def poll(self) -> Verdict | None:
        return None

    def busy(self) -> str | None:
        return None

    def end(self, reason: str) -> Verdict | None:
        return None

    def on_live(self, version: int | None) -> None:
        """Another version is live now."""

    def figures(self) -> dict[str, Any]:
        return {}


_REGISTERED: dict[str, type[Stage]] = {}


def register_stage(name: str, settings: type[BaseModel] | None = None, exposure: int = OFFLINE,
                   needs: Sequence[str] = ()):
    """Class decorator: `gate.stages` may name the class as `name`; `settings` validates `gate.<name>`."""

    def register(cls: type[Stage]) -> type[Stage]:
        known = _REGISTERED.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise GateError(f"gate stage {name!r} is registered twice ({known.__module__}, {cls.__module__})")
        cls.name, cls.settings_type, cls.exposure, cls.needs = name, settings, exposure, frozenset(needs)
        _REGISTERED[name] = cls
        return cls

    return register


def stage_class(name: str) -> type[Stage]:
    _builtin()
    cls = _REGISTERED.get(name)
    if cls is None:
        raise GateError(f"gate.stages: no stage named {name!r} (known: {', '.join(sorted(_REGISTERED))})")
    return cls


def check_stages(section: GateSection, gives: frozenset[str], kind: str) -> dict[str, Any]:
    """Each listed stage's validated settings, by name; GateError naming the first problem: an unknown
    stage, a section that names none, bad settings, a stage this kind cannot feed, or an order in
    which a stage reaches live traffic before one that does not."""
    _builtin()
    settings, last = {}, None
    for name in section.stages:
        if name == GUARD:
            raise GateError(f"gate.stages: {GUARD!r} guards live on every gate; it is not a stage a candidate passes")
        cls = stage_class(name)
        missing = sorted(cls.needs - gives)
        if missing:
            raise GateError(f"gate.stages: {name!r} needs {', '.join(missing)} evidence, which a {kind} does not give")
        if last is not None and cls.exposure < last.exposure:
            raise GateError(f"gate.stages {section.stages}: `{name}` ({EXPOSURE[cls.exposure]}) cannot come after "
                            f"`{last.name}` ({EXPOSURE[last.exposure]})")
        settings[name], last = _settings(section, cls), cls
    for key in section.model_extra or {}:
        if key not in _REGISTERED:
            raise GateError(f"gate.{key}: no such key, and no stage of that name")
    return settings


def _settings(section: GateSection, cls: type[Stage]) -> Any:
    raw = section.stage_settings(cls.name)
    if cls.settings_type is None or isinstance(raw, cls.settings_type):
        return raw
    try:
        return cls.settings_type.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise GateError(f"gate.{cls.name}.{where}: {first['msg']}") from None


def _builtin() -> None:
    """The built-in stages register themselves when their modules are imported."""
    import gate.stages  # noqa: F401
