"""The driver starts a run's loops side by side; a loop that follows another starts once that one has."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from cluster.run import _start_loops
from core.config.loader import validate

CFG = validate({"loops": {"reviews": {"kind": "feedback"}, "scores": {"kind": "novelty", "watch": "reviews"},
                          "cartpole": {"kind": "rl"}}}, "test")


class FakeLoop:
    def __init__(self, name: str, log: list, fail: bool = False, hold_s: float = 0.2):
        self.name, self.log, self.fail, self.hold_s = name, log, fail, hold_s

    def start(self) -> None:
        self.log.append(("start", self.name))
        if self.fail:
            raise RuntimeError(f"{self.name} failed to start")
        time.sleep(self.hold_s)
        self.log.append(("started", self.name))


def test_loops_start_side_by_side_and_a_follower_after_the_loop_it_follows():
    log: list = []
    loops = [FakeLoop(n, log) for n in CFG.loops]
    ctx = SimpleNamespace(endpoints={"reviews_predict": "http://x/v1/predict"})
    said: list[str] = []
    t0 = time.monotonic()
    _start_loops(loops, CFG, ctx, said.append)
    elapsed = time.monotonic() - t0
    assert log.index(("start", "cartpole")) < log.index(("started", "reviews"))  # side by side
    assert log.index(("start", "scores")) > log.index(("started", "reviews"))  # after the loop it watches
    assert elapsed < 3 * 0.2 * 10  # a generous bound: not one after the other many times over
    assert any("loop 'reviews' started" in line and "http://x/v1/predict" in line for line in said)
    assert not any("loop 'cartpole' started" in line and "http://" in line for line in said)  # only its own endpoints


def test_a_failed_start_is_raised_once_every_start_has_ended_and_its_follower_does_not_start():
    log: list = []
    loops = [FakeLoop("reviews", log, fail=True), FakeLoop("scores", log), FakeLoop("cartpole", log)]
    with pytest.raises(RuntimeError, match="reviews failed to start"):
        _start_loops(loops, CFG, SimpleNamespace(endpoints={}), lambda line: None)
    assert ("start", "scores") not in log  # the loop that follows it never starts; the run then stops them all
