"""The loop protocol, the context a loop runs in, and what every loop kind shares.

A loop is one evolution loop of a run (an RL loop, the live feedback loop, MLM
pretraining).  The driver (`cluster.run.execute`) runs every loop of a config
through the same steps, in this order:

    loop = Kind(cfg, ctx)    # nothing starts: the loop reads its config section
    loop.prepare()           # before Ray starts: check what the user can fix (data, env ids)
                             #   and fill in what the config leaves open (a table's obs width)
    loop.start()             # Ray, the replay store and Serve are up: launch the learner,
                             #   actors and apps; add endpoints to ctx.endpoints
    while the run goes on:   # budget, Ctrl-C / SIGTERM, or every loop done()
        loop.poll()          # every progress interval: figures for the progress line and events
        loop.done()          # reached its goal: the run may end once every loop has
    loop.stop()              # always, also after an error: learner, actors, apps
    loop.summary()           # loops.<name> of summary.json

`LoopBase` implements the shared parts: a Ray Train learner in the background
(`LearnerRun`), a group of actors polled in a way that survives restarts
(`ActorGroup`), and `stop()` in one order, each step allowed to fail alone.
A loop kind is a subclass that says what it launches, what it reports and
when it is done.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Protocol

from cluster.actor_group import ActorGroup
from cluster.connect import ClusterHandle
from cluster.learner_run import LearnerRun
from cluster.rundir import RunDir
from core.config.evolve import EvolveConfig
from core.config.run import LearnerSection
from core.storage.registry import PolicyRegistry
from core.storage.paths import RunStorage
from learners.train_loop import LoopSpec


class Loop(Protocol):
    name: str
    uses_replay: bool  # reads or writes the replay store: the run starts its shards

    def prepare(self) -> None: ...
    def start(self) -> None: ...
    def poll(self) -> dict[str, Any]: ...
    def done(self) -> bool: ...
    def stop(self) -> None: ...
    def summary(self) -> dict[str, Any]: ...


class RunContext:
    """What a loop gets from the driver.  `cluster` and `replay` are set once Ray is up."""

    def __init__(self, cfg: EvolveConfig, run_dir: RunDir, registry: PolicyRegistry):
        self.cfg, self.run_dir, self.registry = cfg, run_dir, registry
        # registry, replay and Ray Train storage, local paths absolute (workers keep their own cwd)
        self.storage = RunStorage.resolve(cfg.run.storage, registry.uri, cfg.replay.dir, run_dir.path).absolute()
        self.started = time.time()  # the run's budget counts from here
        self.cluster: ClusterHandle | None = None
        self.replay: Any = None  # a ReplayClient when replay tables are declared
        self.endpoints: dict[str, str] = {}
        # serving/auth_guard.guard_settings: what replicas check keys with; None: auth is off
        self.auth: dict[str, Any] | None = None
        self.run_key: str | None = None
        # serving.tls: what the run's own clients check the proxy's certificate against (httpx `verify`)
        self.client_verify: str | bool = True  # the run's own clients' API key (traffic, act clients) when auth is on
        self.key_service: Any = None  # the key book replicas follow (cluster/key_service.py) when auth is on
        self.say: Callable[[str], None] = print
        self.board: Any = None  # the run's StatusBoard actor (`evolve status`), once Ray is up
        self.publish_cursor = 0  # publishes already written as events (cluster.run._publish_events)
        self.loops: dict[str, Any] = {}  # the run's loops by name (a loop that reads another's prepared data)


class LoopBase:
    """Shared parts of every loop kind; subclasses override `launch`, `figures`, `done`,
    `summary` and, where they have more to finish or undeploy, `finish` and `teardown`."""

    uses_replay: bool = True

    def __init__(self, cfg: EvolveConfig, ctx: RunContext, name: str):
        self.cfg, self.ctx, self.name = cfg, ctx, name
        self.started = time.time()
        self.learner: LearnerRun | None = None
        self.actors = ActorGroup(name)

    # ---- the protocol ----------------------------------------------------------------
    def prepare(self) -> None:
        pass

    def start(self) -> None:
        self.started = time.time()
        self.launch()

    def poll(self) -> dict[str, Any]:
        if self.learner is not None:
            failed = self.learner.check()
            if failed:
                self.ctx.say(f"evolve: warning: {failed}; loop {self.name!r} goes on degraded: serving keeps "
                             "the live version, nothing new is learned")
            self.on_learner(self.learner.drain())
        self.actors.poll()
        for restart in self.actors.restarted():  # Ray brought a crashed or killed actor back
            self.event("actor_restarted", **restart)
        figures = self.figures()
        return {**figures, "learner": "failed"} if self.degraded else figures

    @property
    def degraded(self) -> bool:
        """The loop's learner failed for good: it serves and acts on, it does not learn."""
        return self.learner is not None and self.learner.failed is not None

    def done(self) -> bool:
        return False

    def stop(self) -> None:
        """Learner first (it checkpoints while its data still flows), then the actors (their
        final figures), then what the loop finishes and undeploys.  A step that fails is logged
        and the next one runs."""
        if self.learner is not None:
            quietly(lambda: self.on_learner(self.learner.stop()), f"{self.name}: stopping the learner")
        quietly(self.actors.stop, f"{self.name}: stopping the actors")
        quietly(self.finish, f"{self.name}: finishing")
        quietly(self.actors.kill, f"{self.name}: killing the actors")
        quietly(self.teardown, f"{self.name}: undeploying")

    def summary(self) -> dict[str, Any]:
        return {}

    # ---- what a loop kind fills in -----------------------------------------------------
    def launch(self) -> None:
        raise NotImplementedError

    def figures(self) -> dict[str, Any]:
        return {}

    def on_learner(self, records: list[dict[str, Any]]) -> None:
        """The learner's new board records (already in events.jsonl)."""

    def finish(self) -> None:
        """After the learner and actors stopped: last figures, publishing."""

    def teardown(self) -> None:
        """Undeploy the loop's Serve apps and kill its remaining actors."""

    # ---- helpers ---------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        self.ctx.run_dir.event(self.name, kind, **fields)

    def launch_learner(self, spec: LoopSpec, datasets: dict[str, Any] | None = None,
                       placement: LearnerSection | None = None) -> LearnerRun:
        """`placement`: where this learner runs, when not the run's `learner` section."""
        self.learner = LearnerRun(self.name, spec, placement or self.cfg.learner, self.ctx.run_dir,
                                  datasets=datasets, storage_path=self.ctx.storage.train)
        return self.learner

    def learner_figures(self) -> dict[str, Any]:
        figures = self.learner.figures if self.learner is not None else {}
        return {"updates": int(figures.get("step", 0)), "loss": round_or_none(figures.get("loss"), 4)}


def quietly(fn: Callable[[], Any], what: str) -> Any:
    """Run a teardown step; a failure is printed (one line) and teardown goes on."""
    try:
        return fn()
    except Exception as exc:
        print(f"evolve: warning: {what} failed: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr, flush=True)
        return None


def one_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit]


def plain_event(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy of another component's record (numpy scalars -> Python); the event writer
    owns `time`, `loop` and `event`, so the record's own are kept as gate_time, ..."""
    out = {}
    for k, v in d.items():
        if hasattr(v, "item") and callable(v.item) and getattr(v, "shape", None) == ():
            v = v.item()
        out[f"gate_{k}" if k in ("time", "loop", "event") else k] = v
    return out


def round_or_none(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or value != value else round(float(value), digits)


def mean_or_none(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
