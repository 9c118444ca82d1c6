"""Actors exit on a bug so Ray restarts them: CrashBackoff and the loops that call it (no cluster)."""

from __future__ import annotations

import logging
import os
import threading
import time

import httpx
import pytest

from actors.crash_backoff import CrashBackoff
from actors.traffic import TrafficWorker


class Exited(Exception):
    """Stands in for os._exit: the test sees the exit instead of losing the process."""


def _backoff(tmp_path, sleeps: list[float], exits: list[int], **kw) -> CrashBackoff:
    def exit(code: int) -> None:
        exits.append(code)

    return CrashBackoff("rollout-a/1", state_dir=str(tmp_path), sleep=sleeps.append, exit=exit, **kw)


def test_delay_grows_and_is_capped(tmp_path):
    b = CrashBackoff("x", base_s=1.0, cap_s=30.0, state_dir=str(tmp_path))
    delays = [b.delay_s(n) for n in range(1, 9)]
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert delays[5:] == [30.0, 30.0, 30.0]


def test_fail_logs_sleeps_and_exits_counting_across_restarts(tmp_path, caplog):
    sleeps, exits = [], []
    with caplog.at_level(logging.ERROR, logger="actors.traffic"):
        _backoff(tmp_path, sleeps, exits).fail(RuntimeError("boom"))
        _backoff(tmp_path, sleeps, exits).fail(RuntimeError("boom"))  # a new process: the count is on disk
    assert sleeps == [1.0, 2.0] and exits == [1, 1]
    assert "rollout-a/1" in caplog.text and "RuntimeError: boom" in caplog.text


def test_a_crash_long_after_the_last_counts_as_the_first(tmp_path):
    sleeps, exits = [], []
    b = _backoff(tmp_path, sleeps, exits, reset_after_s=60.0)
    b.fail(RuntimeError("one"))
    old = time.time() - 120
    os.utime(b.path, (old, old))
    b.fail(RuntimeError("two"))
    assert sleeps == [1.0, 1.0]


def _rollout_shell(crashes: list[BaseException]):
    from actors.rollout import RolloutActor, WriteSize

    class Broken:
        writer, env_steps = None, 0

        def run(self, n: int) -> int:
            raise ValueError("env exploded")

    shell = object.__new__(RolloutActor.__ray_metadata__.modified_class)
    shell.worker, shell._write_size, shell._error = Broken(), WriteSize(1, 1), None
    shell._stop, shell._on_crash = threading.Event(), crashes.append
    return shell


def test_a_raising_rollout_loop_calls_the_exit():
    crashes: list[BaseException] = []
    shell = _rollout_shell(crashes)
    shell._loop()
    assert [str(c) for c in crashes] == ["env exploded"]
    assert shell._error == "ValueError: env exploded"


def test_a_stopped_rollout_loop_does_not_exit():
    crashes: list[BaseException] = []
    shell = _rollout_shell(crashes)
    shell._stop.set()
    shell._loop()
    assert crashes == []


def _ok(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("predict"):
        return httpx.Response(200, json={"label": "a", "version": 1})
    return httpx.Response(200, json={})


def _traffic(crashes: list[BaseException]) -> TrafficWorker:
    return TrafficWorker("http://svc", [("hi", 0)], ["a", "b"], transport=httpx.MockTransport(_ok),
                         on_crash=crashes.append)


def test_a_bug_in_a_traffic_thread_calls_the_exit(monkeypatch):
    crashes: list[BaseException] = []
    worker = _traffic(crashes)
    monkeypatch.setattr(worker, "_users", lambda: (_ for _ in ()).throw(KeyError("lost")))
    worker._run_thread()
    assert len(crashes) == 1 and isinstance(crashes[0], KeyError)
    assert "lost" in worker.last_error


def test_stopping_traffic_does_not_exit():
    crashes: list[BaseException] = []
    worker = _traffic(crashes)
    worker.start()
    worker.stop()
    worker.close()
    assert not worker.running() and crashes == []


def test_an_act_client_whose_loop_raises_calls_the_exit():
    from actors.act_traffic import ActClientWorker
    from core.config.rl_gate import ActTrafficSection

    crashes: list[BaseException] = []
    worker = ActClientWorker("http://act", "CartPole-v1", ActTrafficSection(episodes_at_once=1), lambda e: None,
                             transport=httpx.MockTransport(lambda r: httpx.Response(400, text="no")),
                             on_crash=crashes.append)
    worker._run()
    assert len(crashes) == 1 and "400" in str(crashes[0])


def test_the_crash_count_lives_in_a_directory_of_this_users_alone(tmp_path, monkeypatch):
    from actors import crash_backoff

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(crash_backoff.tempfile, "gettempdir", lambda: str(tmp_path))
    sleeps, exits = [], []
    b = CrashBackoff("rollout-a/1", sleep=sleeps.append, exit=exits.append)
    b.fail(RuntimeError("boom"))
    private = tmp_path / f"evolve-{os.getuid()}"
    assert os.path.dirname(b.path) == str(private)
    assert private.stat().st_mode & 0o777 == 0o700 and os.stat(b.path).st_mode & 0o777 == 0o600
    CrashBackoff("rollout-a/1", sleep=sleeps.append, exit=exits.append).fail(RuntimeError("again"))
    assert sleeps == [1.0, 2.0]  # counted across processes, as before


def test_a_state_dir_made_by_someone_else_or_open_to_others_is_not_used(tmp_path, monkeypatch, caplog):
    from actors import crash_backoff

    monkeypatch.setattr(crash_backoff.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    planted = tmp_path / f"evolve-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)  # as a directory another user made first would be
    with caplog.at_level(logging.WARNING, logger="actors.crash_backoff"):
        b = CrashBackoff("x", sleep=lambda s: None, exit=lambda c: None)
    assert b.path is None and "not a directory of this user's alone" in caplog.text
    b.fail(RuntimeError("boom"))  # still exits, with the count in memory
    assert list(planted.iterdir()) == []
    planted.rmdir()
    planted.symlink_to(tmp_path)  # a link to somewhere else
    assert crash_backoff.private_state_dir() is None


def test_xdg_runtime_dir_is_used_when_set(tmp_path, monkeypatch):
    from actors import crash_backoff

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert crash_backoff.private_state_dir() == str(tmp_path / "evolve")
