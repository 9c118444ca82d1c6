"""SIGKILL one component of a live feedback loop under a counting client (tests/chaos/live.py):
the joiner, the publisher, the gate actor, the replay shard, the learner's Ray Train worker, a
traffic actor.  Each must come back by itself: a new version is served after the kill, the run
still stops cleanly, and no acknowledged feedback is missing from the replay export.

Failed requests are reported, not bounded: a component that holds state only in memory (the
joiner's pending events) costs the clients whose events it held.
"""

from __future__ import annotations

import pytest

from tests.chaos.live import kill_under_traffic

# a live run starts in minutes on a loaded 2-core machine, past the default 600 s per test
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1500)]


def test_kill_the_joiner(tmp_path):
    kill_under_traffic(tmp_path, "joiner", ("ray::", "Joiner"))


def test_kill_the_publisher(tmp_path):
    kill_under_traffic(tmp_path, "publisher", ("ray::", "PolicyPublisher"))


def test_kill_the_replay_shard(tmp_path):
    kill_under_traffic(tmp_path, "replay_shard", ("ray::", "ReplayShard"))


def test_kill_the_learner_worker(tmp_path):
    kill_under_traffic(tmp_path, "learner_worker", ("ray::", "RayTrainWorker"))


def test_kill_a_traffic_actor(tmp_path):
    kill_under_traffic(tmp_path, "traffic_actor", ("ray::", "TrafficActor"))


def test_kill_the_gate(tmp_path):
    kill_under_traffic(tmp_path, "gate", ("ray::", "GateActor"))
