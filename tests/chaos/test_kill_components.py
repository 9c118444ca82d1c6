"""SIGKILL one component of a live feedback loop under a counting client (tests/chaos/live.py):
the joiner, the publisher, the gate actor, the replay shard, the learner's Ray Train worker, a
traffic actor.  Each must come back by itself: a new version is served after the kill, the run
still stops cleanly, and no acknowledged feedback is missing from the replay export.

Failed requests are reported, not bounded: a component that holds state only in memory (the
joiner's pending events) costs the clients whose events it held.
"""

from __future__ import annotations

import json

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
    # checkpoints as often as candidates: one is on disk by the time v2 is live and the kill comes
    kill_under_traffic(tmp_path, "learner_worker", ("ray::", "RayTrainWorker"), "loops.sentiment.learning.checkpoint_every=5")
    loop = json.loads((tmp_path / "run" / "summary.json").read_text())["loops"]["sentiment"]
    assert (loop["resumed_from_update"] or 0) > 0, f"the restarted worker group started over: {loop}"


def test_kill_a_traffic_actor(tmp_path):
    figures = kill_under_traffic(tmp_path, "traffic_actor", ("ray::", "TrafficActor"),
                                 back_at_work=_traffic_predicts_twice_after_restart)
    # the run's only traffic actor: feedback predicted after the respawn is the new actor's
    assert figures["traffic_rows_after_respawn"] > 0, figures


def _traffic_predicts_twice_after_restart(events: list[dict], respawned_wall: float) -> bool:
    """The loop noticed the traffic actor's restart, and two progress lines after that show its
    predicts rising: the new actor predicts, and its feedback (sent within a second of each
    answer) has had a progress interval to be joined. A respawned actor starts from scratch
    (loads its data, starts its users), which takes seconds the kill alone does not show."""
    restart = next((e for e in events if e["event"] == "actor_restarted" and e["time"] > respawned_wall), None)
    if restart is None:
        return False
    later = [e["predicts"] for e in events if e["event"] == "progress" and e["loop"] == restart["loop"]
             and e["time"] > restart["time"]]
    return len(later) >= 3 and later[-1] > later[-2] > later[0]


def test_kill_the_gate(tmp_path):
    kill_under_traffic(tmp_path, "gate", ("ray::", "GateActor"))
