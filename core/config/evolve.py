"""The whole run's configuration: the run-level sections and its loops, each a named instance of a kind.

    loops:
      sentiment: {kind: feedback, data: {...}, learning: {...}}    # a classifier served at /v1
      cartpole:  {kind: rl, env_id: CartPole-v1, ...}               # a policy at /v1/policies/cartpole/act

Each loop's section is the one its `kind` names (core/config/kinds.py).  What a
loop leaves open is filled in from its name: its policy id, and the replay
tables its kind writes (`<loop>` and `<loop>-text` for a feedback loop), which
are declared under `replay.tables` with the kind's settings unless named there.
Two loops may not share a policy id, a route or a table they both write: the
config is refused, naming both.  Every section forbids unknown keys, so a typo
fails at load time; `core.config.loader` turns errors into one line.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from core.config.base import NAME_PATTERN, LoopSection, Section
from core.config.kinds import KINDS, AnyLoopSection
from core.config.replay import ReplaySection, TableSection
from core.config.run import ClusterSection, LearnerSection, RegistrySection, RunSection
from core.config.serving import ServingSection

# Names the run's own events, Serve apps and actors use: a loop may not take one.
RESERVED_LOOP_NAMES = ("run", "replay", "publisher", "evolve", "gateway")


class EvolveConfig(Section):
    run: RunSection = Field(default_factory=RunSection)  # the run: name, budget, directory, storage
    cluster: ClusterSection = Field(default_factory=ClusterSection)  # the Ray cluster it runs on
    serving: ServingSection = Field(default_factory=ServingSection)  # Serve's proxies, keys, TLS, exploration
    registry: RegistrySection = Field(default_factory=RegistrySection)  # where versions are stored
    learner: LearnerSection = Field(default_factory=LearnerSection)  # where every loop's learner runs
    replay: ReplaySection = Field(default_factory=ReplaySection)  # the replay store and its tables
    # The loops `evolve run` starts, in this order, by name: each {kind: feedback | rl | mlm | clm | novelty, ...}.
    loops: dict[str, AnyLoopSection] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _refuse_a_loop_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("loops"), list):
            raise ValueError(old_shape_hint(data["loops"]))
        return data

    @model_validator(mode="after")
    def _resolve_and_check(self) -> "EvolveConfig":
        ports = {
            "serving.http_port": self.serving.http_port,
            "serving.grpc_port": self.serving.grpc_port,
            "cluster.dashboard_port": self.cluster.dashboard_port,
        }
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must differ, got {ports}")
        for name in self.loops:
            if name in RESERVED_LOOP_NAMES or not NAME_PATTERN.match(name):
                raise ValueError(f"loops: {name!r} cannot name a loop: use letters, digits, '_', '.', '-' and none of "
                                 f"{', '.join(RESERVED_LOOP_NAMES)}")
        for name, loop in self.loops.items():
            if getattr(loop, "policy_id", "") is None:
                loop.policy_id = name
            self._resolve_tables(name, loop)
        self._refuse_clashes()
        for name, loop in self.loops.items():
            loop.check_in_run(name, self)
        self._check_start_order()
        return self

    def _check_start_order(self) -> None:
        names = list(self.loops)
        for i, (name, loop) in enumerate(self.loops.items()):
            later = [n for n in loop.start_after if n not in names[:i]]
            if later:
                raise ValueError(f"loops.{name}.start_after: {', '.join(later)} is not a loop listed before "
                                 f"{name!r} (loops: {', '.join(names)})")

    def _resolve_tables(self, name: str, loop: LoopSection) -> None:
        """Name the tables the loop's kind writes, and declare each under replay.tables."""
        needs = KINDS[loop.kind].tables
        if not needs:
            return
        unknown = sorted(set(loop.tables) - set(needs))
        if unknown:
            raise ValueError(f"loops.{name}.tables: a {loop.kind} loop writes {', '.join(needs)}, not {', '.join(unknown)}")
        for role, need in needs.items():
            table = loop.tables.setdefault(role, f"{name}{need.suffix}")
            if table is None:
                if not need.optional:
                    raise ValueError(f"loops.{name}.tables.{role}: a {loop.kind} loop needs this table")
                continue
            if not NAME_PATTERN.match(table):
                raise ValueError(f"loops.{name}.tables.{role} {table!r}: a table name is letters, digits, '_', '.', '-'")
            if self.replay.enabled and table not in self.replay.tables:
                self.replay.tables[table] = TableSection(kind=need.kind, **need.settings)
            self.check_table(f"loops.{name}.tables.{role}", table, need.kind)

    def _refuse_clashes(self) -> None:
        """Two loops with one policy id, one route, or one table both write: refused, naming both."""
        claims: dict[tuple[str, str], str] = {}
        serving = self.serving.enabled
        for name, loop in self.loops.items():
            wanted = [("policy id", pid, "policy_id") for pid in loop.published(self.loops)]
            wanted += [("route", r, "serving.route_prefix") for r in (loop.routes() if serving else [])]
            wanted += [("table", t, f"tables.{role}") for role, t in getattr(loop, "tables", {}).items() if t]
            for what, value, key in wanted:
                other = claims.setdefault((what, value), name)
                if other != name:
                    raise ValueError(f"loops {other!r} and {name!r} both use {what} {value!r}: give one its own "
                                     f"(loops.{name}.{key})")
        gateway = self.serving.route_prefix.rstrip("/") or "/"
        for (what, value), name in claims.items():
            if what == "route" and value == gateway:
                raise ValueError(f"loops.{name} serves under {value!r}, the gateway's serving.route_prefix")

    def check_table(self, key: str, name: str, kind: str) -> None:
        table = self.replay.tables.get(name) if self.replay.enabled else None
        if table is None:
            raise ValueError(f"{key} {name!r} must be a table declared under replay.tables"
                             + ("" if self.replay.enabled else " (replay.enabled is false)"))
        if table.kind != kind:
            raise ValueError(f"{key} {name!r} must be of kind {kind!r}, not {table.kind!r}")

    def loops_of(self, kind: str) -> dict[str, LoopSection]:
        """This run's loops of `kind`, by name, in order."""
        return {name: loop for name, loop in self.loops.items() if loop.kind == kind}


def old_shape_hint(kinds: list[Any], names: dict[str, str] | None = None) -> str:
    """One line: why a `loops:` list with top-level loop sections is refused, and the shape that
    replaces it (`names`: the old sections' `name`, which becomes the loop's key)."""
    names = {**_DEFAULT_NAMES, **(names or {})}
    example = ", ".join(f"{names.get(str(k), str(k))}: {{kind: {k}, ...}}" for k in kinds) \
        or "sentiment: {kind: feedback, ...}"
    return (f"the loops are named now, each with its kind and its own keys: loops: {{{example}}}; the keys of "
            f"the old top-level section of a kind go inside its loop, in groups (`evolve config keys` lists them)")


_DEFAULT_NAMES = {"feedback": "sentiment", "rl": "cartpole", "mlm": "mlm", "novelty": "novelty"}
