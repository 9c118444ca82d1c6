"""The run directory: resolved config, an event log, and a summary on exit.

    runs/<name>/config.yaml     the resolved config
    runs/<name>/events.jsonl    one JSON object per event: time, loop, event, fields
    runs/<name>/summary.json    {"run": {...}, "loops": {"<loop>": {...}}}
    runs/<name>/run.lock        held by the live run (core.storage.run_hold): one run per directory

A run directory this creates is 0o700 and its files 0o600: they hold users' data.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from core.config.evolve import EvolveConfig
from core.config.loader import dump_config


class RunDir:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # each record, once written (the live status)
        # Line-buffered append: a crash loses at most the event being written,
        # and a resumed run keeps the earlier events.
        self._events = open(self.path / "events.jsonl", "a", buffering=1, encoding="utf-8", opener=_private)
        if self._events.tell() > 0 and not _ends_with_newline(self.path / "events.jsonl"):
            self._events.write("\n")  # close a line torn by a crash so the next event stays parseable

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    def write_config(self, cfg: EvolveConfig) -> None:
        _atomic_write(self.path / "config.yaml", dump_config(cfg))

    def event(self, loop: str, event: str, **fields: Any) -> dict[str, Any]:
        record = {"time": time.time(), "loop": loop, "event": event, **fields}
        line = json.dumps(_json_safe(record), separators=(",", ":"))
        with self._lock:
            self._events.write(line + "\n")
            for listener in self.listeners:  # under the lock: learner threads write events too
                listener(record)
        return record

    def write_summary(self, run: dict[str, Any], loops: dict[str, dict[str, Any]]) -> Path:
        path = self.path / "summary.json"
        _atomic_write(path, json.dumps(_json_safe({"run": run, "loops": loops}), indent=2) + "\n")
        return path

    def close(self) -> None:
        with self._lock:
            if not self._events.closed:
                self._events.close()


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse events.jsonl, skipping a torn last line left by a crash."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", opener=_private) as fh:
        fh.write(text)
    os.replace(tmp, path)


def _private(path: str, flags: int) -> int:
    """open()'s opener: a file this creates is the user's alone (an existing one keeps its mode)."""
    return os.open(path, flags, 0o600)


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON; write them as null rather than produce an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
