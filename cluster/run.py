"""`evolve run`: wire one run from its config and drive its loops to the end.

    config -> loops built and prepared (bad input refused before Ray starts)
           -> Ray (embedded or joined) -> replay shards -> Serve gateway -> the loops started side by side
           -> every progress interval: each loop polled, one progress line, events
           -> budget, every loop done, Ctrl-C or SIGTERM -> each loop stopped -> summary.json -> report.html

The terminal gets Evolve's lines only (cluster.quiet): Ray's own log lines go to the run
directory unless `--verbose`.  While the run goes, a named actor holds its status row per
loop for `evolve status` (cluster.run_status).

The driver owns no learning logic: the loop protocol is in `cluster.loop`.
`evolve pretrain` is this same driver on an `mlm` loop.
"""

from __future__ import annotations

import platform
import signal
import threading
import time
from typing import Any, Callable

import ray

from cluster import loops as loop_kinds
from cluster.connect import ClusterHandle, connect, disconnect, resource_report
from cluster.errors import UserError
from cluster.learner_run import get_or
from cluster.loop import Loop, RunContext, quietly
from cluster.milestones import Milestones
from cluster.progress_lines import progress_lines
from cluster.quiet import RayLogs
from cluster.run_status import RunStatus, StatusBoard, board_name
from cluster.rundir import RunDir
from core.config.evolve import EvolveConfig
from core.storage.registry import PolicyRegistry
from core.storage.registry_lease import RegistryLease
from core.storage.run_hold import RunHold, hold_places
from core.storage.paths import RunStorage, shared_storage_problems

LEASE_TTL_S = 30.0  # a run killed without cleanup stops blocking offline rollbacks after this


def execute(cfg: EvolveConfig, say: Callable[[str], None] = print, verbose: bool = False,
            report: bool = True) -> int:
    """Run until the budget ends, every loop is done, or the user stops it; returns an exit code.
    `verbose`: Ray's own log lines on the terminal too; `report`: write report.html at the end.
    Raises StorageHeld, before anything is written, while a live run holds this run's directory
    or storage (core.storage.run_hold)."""
    hold = RunHold(hold_places(cfg.run.resolved_run_dir(), cfg.run.storage, cfg.replay.dir), cfg.run.name)
    for line in hold.acquire():
        say(f"evolve: {line}")
    try:
        return _execute(cfg, say, verbose, report, hold)
    finally:
        hold.release()


def _execute(cfg: EvolveConfig, say: Callable[[str], None], verbose: bool, report: bool, hold: RunHold) -> int:
    rd = RunDir(cfg.run.resolved_run_dir())
    status = RunStatus(cfg.run.name, str(rd.path), kinds={name: loop.kind for name, loop in cfg.loops.items()})
    rd.listeners.append(status.observe)
    ray_logs = RayLogs(rd.path, verbose)  # entered just before Ray starts: bad input is reported as usual
    storage = RunStorage.resolve(cfg.run.storage, cfg.registry.uri, cfg.replay.dir, rd.path)
    ctx = RunContext(cfg, rd, PolicyRegistry(storage.absolute().registry))
    started = ctx.started
    say = ctx.say = _whole_lines(say)  # loops start on threads of their own
    rd.listeners.append(Milestones(say, started, width=max([len(name) for name in cfg.loops] + [8])))
    run_info: dict[str, Any] = {"name": cfg.run.name, "run_dir": str(rd.path), "started_at": started}
    stop = StopSignals()

    def storage_lost(why: str) -> None:  # another run took this run's storage over: stop writing to it
        say(f"evolve: {why}; stopping")
        stop.request("storage_lost")

    hold.on_lost = storage_lost
    loops: list[Loop] = []
    running: list[Loop] = []  # started (or starting): these are stopped at the end
    reason = "error"
    # while this run is live, an offline `evolve rollback` on its registry is refused
    lease = RegistryLease(ctx.registry.uri, cfg.run.name, str(rd.path), ttl_s=LEASE_TTL_S).acquire()
    try:
        say(f"evolve: run {cfg.run.name!r} -> {rd.path}")
        loops = [loop_kinds.build(name, cfg, ctx) for name in cfg.loops]
        ctx.loops = {loop.name: loop for loop in loops}
        for loop in loops:
            loop.prepare()
        rd.write_config(cfg)  # after prepare: what the loops filled in (a table's obs width) is recorded
        if cfg.serving.enabled:  # before Ray starts: auth on with no key is refused at once
            ctx.auth, ctx.run_key = _auth_settings(cfg)
            ctx.client_verify = cfg.serving.tls.client_verify() if cfg.serving.tls is not None else True
        longest = [loop.serving.max_text_chars for loop in cfg.loops_of("feedback").values()] \
            + [loop.serving.max_prompt_chars for loop in cfg.loops_of("generate").values()]
        acting = bool(cfg.loops_of("rl"))
        if cfg.serving.enabled and cfg.serving.grpc and (longest or acting):
            from serving.feedback_app import bound_grpc_messages
            from serving.policy_server import MAX_ACT_BODY_BYTES

            # an embedded cluster's gRPC proxy inherits it
            bound_grpc_messages(max(longest, default=0), at_least=MAX_ACT_BODY_BYTES if acting else 0)
        ray_logs.__enter__()
        ctx.cluster = handle = connect(cfg.cluster, log_to_driver=ray_logs.log_to_driver)
        if ctx.auth is not None:  # replicas on every node follow the keys from here
            from cluster.key_service import start_key_service

            ctx.auth, ctx.key_service = start_key_service(ctx.auth, cfg.serving.auth, cfg.run.name)
        stop.install()  # ray.init puts its own SIGTERM handler in, which ends the process on the spot
        if not verbose:
            link = ray_logs.link_session_logs()
            say(f"evolve: Ray's own logs in {link or rd.path / 'ray-driver.log'} (--verbose shows them here)")
        ctx.board = quietly(lambda: StatusBoard.options(name=board_name(cfg.run.name), get_if_exists=True).remote(),
                            "starting the status board")
        if ctx.board is not None:
            ctx.board.put.remote(status.snapshot())  # `evolve status` shows the run while its loops start
        run_info.update(address=handle.address, embedded=handle.embedded, dashboard_url=handle.dashboard_url)
        say(f"evolve: Ray {ray.__version__} {'embedded' if handle.embedded else 'cluster'} at {handle.address}")
        say(f"evolve: dashboard {handle.dashboard_url or '(disabled)'}" + _auth_hint(handle))
        _refuse_node_local(storage, handle)
        if any(loop.uses_replay for loop in loops):
            _start_replay(cfg, ctx, say)
        endpoints_line = _start_serving(cfg, ctx, say) if cfg.serving.enabled else None
        running.extend(loops)
        _start_loops(loops, cfg, ctx, say)
        if endpoints_line:
            # said once every loop's routes answer: users (and tests) start sending on this line
            _wait_for_routes(ctx.endpoints)
            say(endpoints_line)
        rd.event("run", "started", address=handle.address, dashboard_url=handle.dashboard_url, endpoints=ctx.endpoints)
        reason = _drive(cfg, rd, loops, started, stop, say, ctx, status)
    finally:
        # consumers before producers: a classifier stops before the MLM loop it follows publishes
        # its last encoder, which is for the next run, not a re-base in this run's final seconds
        for loop in reversed(running):
            quietly(loop.stop, f"stopping loop {loop.name!r}")
        if ray.is_initialized():
            quietly(lambda: _publish_events(rd, ctx), "reading publish latencies")
        if ctx.replay is not None:
            run_info["replay"] = quietly(lambda: _replay_summary(ctx.replay), "reading the replay store")
        summaries = {loop.name: quietly(loop.summary, f"summary of loop {loop.name!r}") or {} for loop in loops}
        degraded = [loop.name for loop in loops if getattr(loop, "degraded", False)]
        for name in degraded:
            summaries[name]["status"] = "degraded"
        run_info.update(wall_s=round(time.time() - started, 3), stopped_by=reason, ray_version=ray.__version__,
                        python=platform.python_version(), status="degraded" if degraded else "ok")
        rd.event("run", "finished", stopped_by=reason, wall_s=run_info["wall_s"])
        path = rd.write_summary(run_info, summaries)
        rd.close()
        stop.restore()
        if "http" in ctx.endpoints:
            quietly(_undeploy, "undeploying the gateway")
        disconnect()
        ray_logs.__exit__(None, None, None)
        quietly(lease.release, "releasing the registry lease")  # nothing serves the registry's versions now
    say(f"evolve: stopped ({reason}) after {run_info['wall_s']:.1f}s; summary: {path}")
    if report:
        written = quietly(lambda: _write_report(rd), "writing the run report")
        if written is not None:
            say(f"evolve: report {written.html} ({len(written.pngs)} figures)")
    return 0


def _write_report(rd: RunDir):
    from cluster.report import write_report

    return write_report(rd.path)


def _publish_events(rd: RunDir, ctx: RunContext) -> None:
    """Each publish the publisher measured since the last call, as a `publisher` `publish` event
    (the report's latency histogram)."""
    from serving.publisher import PUBLISHER_NAME

    try:
        publisher = ray.get_actor(PUBLISHER_NAME)
    except ValueError:
        return  # no loop publishes through it (yet)
    ctx.publish_cursor, records = get_or(publisher.measured_since.remote(ctx.publish_cursor),
                                         (ctx.publish_cursor, []))
    for rec in records:
        rd.event("publisher", "publish", **rec)


def _drive(cfg: EvolveConfig, rd: RunDir, loops: list[Loop], started: float, stop: StopSignals, say, ctx,
           status: RunStatus) -> str:
    budget = cfg.run.budget_s
    interval = cfg.run.progress_interval_s
    while True:
        elapsed = time.time() - started
        figures = {loop.name: loop.poll() for loop in loops}
        for name, fig in figures.items():
            rd.event(name, "progress", **fig)
        usage = resource_report()
        sizes = None
        if ctx.replay is not None:
            replay = _replay_summary(ctx.replay)
            sizes = {name: t["size"] for name, t in replay.items()}
            rd.event("replay", "progress", tables=replay)
        _publish_events(rd, ctx)
        rd.event("run", "progress", elapsed_s=round(elapsed, 3), resources=usage)
        if ctx.board is not None:
            ctx.board.put.remote(status.snapshot())  # fire and forget: `evolve status` reads the newest
        for line in progress_lines(elapsed, budget, usage, figures, sizes, kinds=status.kinds):
            say(line)
        if loops and all(loop.done() for loop in loops):
            return "loops_done"
        remaining = None if budget is None else budget - (time.time() - started)
        if remaining is not None and remaining <= 0:
            return "budget"
        if stop.wait(interval if remaining is None else min(interval, remaining)):
            return stop.reason


def _start_loops(loops: list[Loop], cfg: EvolveConfig, ctx: RunContext, say) -> None:
    """Start every loop side by side: a loop's start mostly waits (Serve deploys its app, Ray Train
    brings its workers up), so one after the other would add those waits up.  A loop that follows
    another (a novelty loop reads its feedback loop's first version) starts once that one has.
    Returns when every start has ended; raises the first error."""
    started = {loop.name: threading.Event() for loop in loops}
    errors: list[BaseException] = []

    def start(loop: Loop) -> None:
        try:
            for name in cfg.loops[loop.name].starts_after():
                started[name].wait()
            if not errors:
                _start_loop(loop, ctx, say)
        except BaseException as exc:  # re-raised on the driver's thread
            errors.append(exc)
        finally:
            started[loop.name].set()

    threads = [threading.Thread(target=start, args=(loop,), name=f"start-{loop.name}", daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _whole_lines(say: Callable[[str], None]) -> Callable[[str], None]:
    """`say` for several threads: print writes a line and its newline apart, so two threads' lines
    could run together."""
    lock = threading.Lock()

    def whole(line: str) -> None:
        with lock:
            say(line)
    return whole


def _start_loop(loop: Loop, ctx: RunContext, say) -> None:
    """Start one loop, saying so: a loop takes seconds to tens of seconds to come up (Serve
    apps, Ray Train workers, scoring the first version) before its first progress line."""
    t0 = time.monotonic()
    say(f"evolve: starting loop {loop.name!r} ...")
    loop.start()
    added = [url for key, url in ctx.endpoints.items() if key.startswith(f"{loop.name}_")]
    say(f"evolve: loop {loop.name!r} started in {time.monotonic() - t0:.1f}s"
        + (f"; endpoints {'  '.join(added)}" if added else ""))


def _start_replay(cfg: EvolveConfig, ctx: RunContext, say) -> None:
    if not cfg.replay.enabled or not cfg.replay.tables:
        return
    from actors.replay_client import ReplayClient
    from actors.replay_shard import launch_shards

    directory = ctx.storage.replay
    shards = launch_shards(cfg.replay, directory, seed=cfg.run.seed)
    ctx.replay = ReplayClient(shards, cfg.replay, seed=cfg.run.seed)
    tables = ctx.replay.info()  # waits until every shard has recovered its segments
    recovered = sum(t["size"] for t in tables.values())
    say(f"evolve: replay {cfg.replay.num_shards} shard(s) at {directory}: tables {', '.join(tables)}"
        + (f" ({recovered} rows recovered)" if recovered else ""))


def _refuse_node_local(storage: RunStorage, handle: ClusterHandle) -> None:
    """On a joined cluster of several nodes, state other nodes read must be on shared storage."""
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    problems = shared_storage_problems(storage) if not handle.embedded and nodes > 1 else []
    if problems:
        raise UserError(f"refusing to run on a {nodes}-node cluster: " + "; ".join(problems))


def _replay_summary(client) -> dict[str, dict]:
    keep = ("size", "capacity", "inserts", "samples", "inserts_per_s", "samples_per_s",
            "oldest_policy_version", "newest_policy_version", "disk_bytes")
    return {name: {k: t[k] for k in keep} for name, t in client.info().items()}


def _auth_settings(cfg: EvolveConfig) -> tuple[dict[str, Any] | None, str | None]:
    from serving.auth_guard import AuthNotReady, guard_settings, with_run_key

    if cfg.serving.tls is not None and cfg.serving.tls.problems():
        raise UserError("; ".join(cfg.serving.tls.problems()))
    try:  # gRPC on: Serve's proxy listens on every interface, so keys are on whatever the host
        return with_run_key(guard_settings(cfg.serving.auth, cfg.serving.host, grpc=cfg.serving.grpc))
    except AuthNotReady as exc:
        raise UserError(str(exc)) from None


def _start_serving(cfg: EvolveConfig, ctx: RunContext, say) -> str:
    """Deploy the gateway; returns the endpoints line, said once the loops' routes answer."""
    from serving.gateway import deploy_gateway

    if ctx.auth is not None:
        say(f"evolve: API keys required (serving.auth) on {cfg.serving.host}")

    grpc = None
    if cfg.serving.grpc and (cfg.loops_of("feedback") or cfg.loops_of("generate") or cfg.loops_of("rl")):
        from serving.feedback_app import grpc_options

        grpc = grpc_options(cfg.serving.grpc_port)
    endpoints = deploy_gateway(cfg.serving, ctx.registry.uri, grpc, ctx.auth)
    ctx.endpoints["http"] = endpoints.http
    acting = [loop.policy_id for loop in cfg.loops_of("rl").values()]
    if acting:  # each RL loop answers under /v1/policies/<its id>; any other id: a 404 naming them
        from serving.policy_index import deploy_policy_index

        deploy_policy_index(acting)
    if grpc:
        # the address bound, not the one asked for: Ray's gRPC proxy has no host option
        ctx.endpoints["grpc"] = f"[::]:{cfg.serving.grpc_port}"
        if cfg.serving.host in ("127.0.0.1", "localhost", "::1"):
            say(f"evolve: warning: gRPC listens on every interface ([::]:{cfg.serving.grpc_port}), not "
                f"{cfg.serving.host}: Ray Serve's gRPC proxy has no host option; firewall the port"
                + ("" if ctx.auth is not None else " (no API key asked: serving.auth.allow_open_grpc_unsafe)"))
        if cfg.serving.tls is not None:
            from core.auth.tls import GRPC_PLAINTEXT

            say(f"evolve: warning: {GRPC_PLAINTEXT}")
    return (f"evolve: endpoints {endpoints.http}/healthz  {endpoints.http}/v1/models"
            + (f"  gRPC {ctx.endpoints['grpc']} (EvolveFeedback, EvolvePolicies; metadata application=<loop name>)" if grpc else ""))


def _wait_for_routes(endpoints: dict[str, str], timeout_s: float = 60.0) -> None:
    """Until Serve's HTTP proxy routes each loop endpoint (/v1/predict, /act, ...): it learns an
    app's route a moment after `serve.run` returns, and answers 404 until then.  Any other answer
    (405 to this GET, 401 without a key) means the route is live.  Gives up quietly at the deadline."""
    import httpx

    urls = [url for key, url in endpoints.items() if key not in ("http", "grpc") and url.startswith("http")]
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while time.monotonic() < deadline:
            try:
                # no key is sent: the probe need not check a certificate (serving.tls)
                if httpx.get(url, timeout=5, verify=False).status_code != 404:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)


def _undeploy() -> None:
    from ray import serve

    from serving.gateway import undeploy
    from serving.policy_index import APP_NAME as POLICY_INDEX, undeploy_policy_index

    undeploy()
    if POLICY_INDEX in serve.status().applications:
        undeploy_policy_index()


def _auth_hint(handle: ClusterHandle) -> str:
    if handle.dashboard_url and handle.auth_mode.startswith("token"):
        return "  (token auth: `ray get-auth-token` prints the token the dashboard asks for)"
    return ""


class StopSignals:
    """Ctrl-C and SIGTERM end the run cleanly (each loop stopped, the summary written); a second
    Ctrl-C stops waiting for that."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "interrupt"
        self._previous = {}
        self.install()

    def install(self) -> None:
        """(Re)take Ctrl-C and SIGTERM; `restore` gives back what was there before the first time."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(sig, self._handle)
                self._previous.setdefault(sig, previous)

    def _handle(self, signum, _frame) -> None:
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = "interrupt" if signum == signal.SIGINT else "terminated"
        self._event.set()

    def request(self, reason: str) -> None:
        """Stop the run from another thread, as a signal would."""
        self.reason = reason
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(max(timeout, 0.0))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
