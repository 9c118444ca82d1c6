"""ActorGroup's bookkeeping across restarts: counters carried, each restart reported once."""

from cluster.actor_group import ActorGroup


def test_a_restart_carries_the_counters_and_is_reported_once():
    group = ActorGroup("loop", counters=("predicts",))
    first = group._carry(0, {}, {"actor_id": "loop-traffic-0", "incarnation": "a", "predicts": 40})
    assert group.restarted() == []  # the first figures of an actor are no restart
    same = group._carry(0, first, {"actor_id": "loop-traffic-0", "incarnation": "a", "predicts": 55})
    assert group.restarted() == [] and same["base_predicts"] == 0
    group.stats[0] = group._carry(0, same, {"actor_id": "loop-traffic-0", "incarnation": "b", "predicts": 3})
    assert group.restarted() == [{"actor": 0, "actor_id": "loop-traffic-0", "incarnation": "b", "restarts": 1}]
    assert group.restarted() == []  # handed over once
    assert group.total("predicts") == 58  # 55 of the first life, 3 of the second
