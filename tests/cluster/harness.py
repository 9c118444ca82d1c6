"""A real multi-node Ray cluster on one machine: `ray start --head` plus `ray start --address`
worker nodes, each a raylet of its own with its own resources and ports, torn down by the
pids they started (never a plain `ray stop`, which would end other clusters on the machine).

A node is found again by its node-manager port: that is how `kill_node` finds the raylet
to SIGKILL, the way a machine that loses power takes its raylet with it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from tests.conftest import free_ports

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 420


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)  # polling on a deadline


@dataclass
class Node:
    name: str
    node_manager_port: int
    resources: dict[str, float]
    num_cpus: int
    node_id: str | None = None


@dataclass
class LocalCluster:
    temp_dir: Path
    env: dict[str, str]
    cwd: Path
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, node: Node, extra: list[str]) -> None:
        agent, agent_grpc, metrics, runtime_env = free_ports(4)
        cmd = [str(BIN / "ray"), "start", f"--num-cpus={node.num_cpus}", "--num-gpus=0",
               f"--resources={json.dumps(node.resources)}", f"--node-manager-port={node.node_manager_port}",
               f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
               "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--object-store-memory=200000000", *extra]
        try:  # minutes on a loaded machine: `ray start` waits for the GCS, raylet and dashboard
            out = subprocess.run(cmd, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ray start ({node.name}) took over {START_TIMEOUT_S}s") from None
        if out.returncode != 0:
            raise AssertionError(f"ray start ({node.name}) failed:\n{out.stdout[-1500:]}\n{out.stderr[:1500]}\n...\n{out.stderr[-1500:]}")
        self.nodes.append(node)

    def start_head(self, num_cpus: int, resources: dict[str, float] | None = None, attempts: int = 2) -> Node:
        """On a loaded machine the dashboard can miss `ray start`'s start-up deadline: one more try."""
        for attempt in range(attempts):
            self.gcs_port, self.dashboard_port, client, nm = free_ports(4)
            node = Node("head", nm, resources or {}, num_cpus)
            try:
                self._start(node, ["--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                                   "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
                                   f"--temp-dir={self.temp_dir}", "--include-dashboard=true"])
                return node
            except AssertionError:
                self.nodes.append(node)  # so stop() finds what it left behind
                self.stop()
                self.nodes.clear()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def add_worker(self, name: str, num_cpus: int, resources: dict[str, float], attempts: int = 3) -> Node:
        """A loaded machine's GCS can miss `ray start`'s deadlines: a failed start is killed and retried."""
        for attempt in range(attempts):
            (nm,) = free_ports(1)
            node = Node(name, nm, resources, num_cpus)
            try:
                self._start(node, [f"--address={self.address}"])
                return node
            except AssertionError:
                self._kill_matching(f"--node_manager_port={nm}")
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _kill_matching(self, needle: str) -> None:
        procs = [p for p in psutil.process_iter(["cmdline"]) if needle in " ".join(p.info["cmdline"] or [])]
        for p in list(procs):
            try:
                procs += p.children(recursive=True)
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)

    def raylet(self, node: Node) -> psutil.Process | None:
        flag = f"--node_manager_port={node.node_manager_port}"
        for p in psutil.process_iter(["cmdline", "name"]):
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].endswith("raylet") and flag in cmd:
                return p
        return None

    def kill_node(self, node: Node) -> float:
        """SIGKILL the node's raylet and everything it started; returns when (time.time())."""
        raylet = self.raylet(node)
        assert raylet is not None, f"no raylet for node {node.name}"
        procs = [raylet, *raylet.children(recursive=True)]
        at = time.time()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        return at

    def stop(self) -> None:
        """Kill every process of this cluster: those under our temp dir, by pid."""
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(self.temp_dir) in cmd or any(f"--node_manager_port={n.node_manager_port}" in cmd
                                                for n in self.nodes):
                mine.append(p)
        for p in mine:
            try:
                mine += p.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for p in {p.pid: p for p in mine}.values():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(mine, timeout=30)


# Token auth on (tests/conftest.py's default, and ray_cluster.yaml's), one token for every process
# of the test: raylets, the job's driver, `ray job`, `evolve status`, this pytest process.  The
# mode follows this process's, which Ray fixes when it is imported.
AUTH_TOKEN = secrets.token_hex(32)
AUTH_MODE = os.environ.get("RAY_AUTH_MODE", "token")


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": AUTH_MODE, "RAY_AUTH_TOKEN": AUTH_TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
           # a killed raylet is declared dead in seconds, not Ray's default half a minute
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
           # `ray job stop` sends SIGTERM, then SIGKILL after this: time for a clean stop and summary
           "RAY_JOB_STOP_WAIT_TIME_S": "120",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return {**env, **(extra or {})}
