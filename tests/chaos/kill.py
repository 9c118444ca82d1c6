"""Chaos helpers: a counting client, SIGKILL of a run's Ray process by its title, and the export check.

The run is `evolve run` in a subprocess (tests/integration/helpers.py); its Ray processes are its
descendants, so a kill never reaches another engineer's cluster on the same machine.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from tests.integration.helpers import run_cli


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def ray_processes(root_pid: int, *needles: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of root_pid's descendants whose command line holds every needle."""
    kids, found, todo = _children(), [], [root_pid]
    while todo:
        pid = todo.pop()
        for kid in kids.get(pid, []):
            todo.append(kid)
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in cmd for n in needles):
                found.append((kid, cmd.strip()))
    return found


def sigkill(root_pid: int, *needles: str) -> tuple[int, str]:
    procs = ray_processes(root_pid, *needles)
    assert procs, f"no process of the run matches {needles}"
    pid, cmd = procs[0]
    os.kill(pid, signal.SIGKILL)
    return pid, cmd


class LoopingClient:
    """A client thread that asks again and again, like a real one (no retries): every non-2xx and every
    connection error is a failure; `ok` holds (monotonic time, model version) of each answer."""

    def __init__(self) -> None:
        self.failed: list[tuple[float, str]] = []
        self.ok: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LoopingClient":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _once(self, http: httpx.Client, i: int) -> None:
        raise NotImplementedError

    def _fail(self, what: str) -> None:
        self.failed.append((time.monotonic(), what))

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    self._once(http, i)
                except httpx.HTTPError as exc:
                    self._fail(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.05)

    def version_at(self, t: float) -> int:
        return max((v for ts, v in self.ok if ts <= t), default=0)

    def first_version_after(self, t: float, version: int) -> float | None:
        return next((ts for ts, v in self.ok if ts > t and v > version), None)


class CountingClient(LoopingClient):
    """predict + feedback; each accepted feedback is an acknowledged event_id."""

    def __init__(self, http: str):
        super().__init__()
        self.http = http
        self.acked: list[str] = []
        self.acked_at: list[float] = []  # monotonic time of each acknowledged feedback

    def _once(self, http: httpx.Client, i: int) -> None:
        r = http.post(f"{self.http}/v1/predict", json={"text": f"质量很好，物流也快 {i}"})
        if r.status_code != 200:
            return self._fail(f"predict {r.status_code} {r.text[:200]}")
        pred = r.json()
        self.ok.append((time.monotonic(), pred["model_version"]))
        label = "pos" if i % 2 else "neg"
        f = http.post(f"{self.http}/v1/feedback", json={"event_id": pred["event_id"], "label": label})
        if f.status_code != 200:
            self._fail(f"feedback {f.status_code} {f.text[:200]}")
        elif f.json().get("accepted"):
            self.acked.append(pred["event_id"])
            self.acked_at.append(time.monotonic())

    def acked_ids(self) -> set[str]:
        return set(self.acked)

    def recovery_after(self, t: float) -> float | None:
        """When the client was whole again after `t`: the first acknowledged feedback after the last
        failure that followed `t` (`t` itself when nothing failed); None while it is not."""
        failures = [ts for ts, _ in self.failed if ts > t]
        if not failures:
            return t
        last = max(failures)
        return next((ts for ts in self.acked_at if ts > last), None)


def exported_column(run_dir: Path, table: str, column: str, tmp: Path) -> list:
    return exported_columns(run_dir, table, [column], tmp)[column]


def exported_columns(run_dir: Path, table: str, columns: list[str], tmp: Path) -> dict[str, list]:
    """Columns of `evolve replay export` of a finished run's table, every row (repeats kept)."""
    out = tmp / f"{table}.parquet"
    done = run_cli("replay", "export", str(run_dir), table, str(out), timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return pq.read_table(out, columns=columns).to_pydict()


def report(component: str, **figures) -> str:
    line = f"CHAOS {component} " + " ".join(f"{k}={v}" for k, v in figures.items())
    print(line, flush=True)
    import json
    with open(Path(__file__).parent / ".results.jsonl", "a") as fh:
        fh.write(json.dumps({"component": component, "at": time.time(), **figures}) + "\n")
    return line
