"""The publisher's bookkeeping without Ray: who counts as a subscriber, and when a latency is measured.

`PolicyPublisher` is a Ray actor class; its undecorated class is driven
directly.  Only `publish`/`restore` need the object store (ray.put), so a
version is made live here by setting `live` the way `_go_live` does.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from types import SimpleNamespace

import pytest

from serving.publisher import PolicyPublisher, PolicySubscription, _Live

Publisher = PolicyPublisher.__ray_metadata__.modified_class


@pytest.fixture
def pub(tmp_path):
    p = Publisher(str(tmp_path / "registry"))
    p.live["cart"] = _Live(3, "weights-ref", published_at=time.time() - 2.0, spec={"kind": "dqn"})
    return p


def _poll(pub, after, subscriber, timeout_s=0.05):
    return asyncio.run(pub.next_version("cart", after, subscriber, timeout_s))


def test_named_pollers_subscribe_and_anonymous_ones_do_not(pub):
    assert _poll(pub, 2, "actor-0") == (3, ["weights-ref"], {"kind": "dqn"})  # the ref stays wrapped
    assert _poll(pub, 2, None) == (3, ["weights-ref"], {"kind": "dqn"})  # the evaluator follows too
    assert _poll(pub, 3, "replica-0") is None  # nothing newer than 3: the long-poll times out
    assert pub.stats("cart")["subscribers"] == ["actor-0", "replica-0"]


def test_latency_is_measured_once_every_subscriber_runs_the_version(pub):
    _poll(pub, 2, "actor-0"), _poll(pub, 2, "replica-0"), _poll(pub, 2, None)
    pub.ack("cart", 3, "actor-0")
    assert pub.stats("cart")["latencies_measured"] == 0  # the replica has not switched yet
    pub.ack("cart", 3, "replica-0")
    st = pub.stats("cart")
    assert st["latencies_measured"] == 1 and st["live_version"] == 3
    assert st["publish_latency_p50_s"] == pytest.approx(2.0, abs=0.5)  # from the learner's call
    assert ("cart", 3) not in pub.acks  # done with: the bookkeeping does not grow


def test_an_ack_of_a_superseded_version_is_not_measured(pub):
    _poll(pub, 1, "actor-0")
    pub.ack("cart", 2, "actor-0")  # version 2 was replaced by 3 before this ack arrived
    assert pub.stats("cart")["latencies_measured"] == 0


def test_a_forgotten_subscriber_is_not_waited_for(pub):
    _poll(pub, 2, "actor-0"), _poll(pub, 2, "actor-1")
    pub.forget("actor-1")  # killed: it will never ack
    pub.ack("cart", 3, "actor-0")
    assert pub.stats("cart")["latencies_measured"] == 1


def test_stats_of_an_unknown_policy(pub):
    st = pub.stats("nope")
    assert st["live_version"] is None and st["versions_published"] == 0
    assert st["publish_latency_p95_s"] is None and st["latencies_measured"] == 0


def test_each_version_is_measured_at_most_once(pub):
    _poll(pub, 2, "actor-0")
    pub.ack("cart", 3, "actor-0")
    pub.ack("cart", 3, "actor-0")  # the same actor after a restart
    assert pub.stats("cart")["latencies_measured"] == 1


def test_a_pickled_subscription_starts_over_from_version_zero():
    # A restarted actor unpickles its subscription: it must ask for the live version again
    # rather than wait for one newer than what its previous life ran.
    sub = PolicySubscription(publisher=None, policy_id="cart", subscriber="actor-0", version=7)
    sub._pending = object()
    again = pickle.loads(pickle.dumps(sub))
    assert (again.policy_id, again.subscriber, again.version, again._pending) == ("cart", "actor-0", 0, None)


class _AckRecorder:
    """Stands in for the publisher's actor handle: records every `ack.remote(...)` call."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.ack = SimpleNamespace(remote=lambda *args: self.calls.append(args))


def test_an_anonymous_subscription_never_acks():
    # The evaluator follows versions anonymously: its acks must never reach the publisher, or it
    # would count toward (and hold back) every version's publish latency.
    publisher = _AckRecorder()
    PolicySubscription(publisher=publisher, policy_id="cart", subscriber=None).ack(3)
    assert publisher.calls == []
    # ...while a named subscriber's ack does reach it (the recorder would have seen the anonymous one)
    PolicySubscription(publisher=publisher, policy_id="cart", subscriber="actor-0").ack(3)
    assert publisher.calls == [("cart", 3, "actor-0")]


def test_a_rollback_reaches_subscribers_that_run_a_newer_version(pub):
    assert _poll(pub, 3, "replica-0") is None  # running the live version: nothing to do
    pub.live["cart"] = _Live(2, "older-ref", published_at=time.time(), spec={"kind": "dqn"})  # restore(2)
    assert _poll(pub, 3, "replica-0") == (2, ["older-ref"], {"kind": "dqn"})  # back to 2, though 2 < 3
