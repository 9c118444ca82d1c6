"""A restarted publisher starts from the registry's live version (the undecorated class, no Ray).

Ray reruns the constructor on a restart (`max_restarts=-1`): everything the
publisher held in memory is gone.  The registry's `live` pointer is what it
must serve then; `put` stands in for ray.put.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from core.storage.registry import PolicyRegistry
from serving.publisher import PolicyPublisher

Publisher = PolicyPublisher.__ray_metadata__.modified_class
SPEC = {"kind": "dqn", "obs_dim": 4, "n_actions": 2}


def _w(seed: int) -> dict:
    return {"fc.weight": np.full((2, 4), seed, np.float32), "fc.bias": np.zeros(2, np.float32)}


@pytest.fixture
def uri(tmp_path):
    reg = PolicyRegistry(tmp_path / "registry")
    for seed in (1, 2):
        reg.promote("cart", reg.publish("cart", _w(seed), {"info": {"spec": SPEC}}))
    return reg.uri


def _fresh(uri: str):
    return Publisher(uri, put=lambda weights: ("ref", weights))  # what Ray builds again after a restart


def test_a_fresh_subscriber_of_a_restarted_publisher_gets_the_live_version(uri):
    pub = _fresh(uri)
    reply = asyncio.run(pub.next_version("cart", 0, "actor-0", 1.0))
    version, [(tag, weights)], spec = reply
    assert version == 2 and tag == "ref" and spec == SPEC
    np.testing.assert_array_equal(weights["fc.weight"], _w(2)["fc.weight"])
    st = pub.stats("cart")
    assert st["live_version"] == 2 and st["reloaded_version"] == 2 and st["versions_published"] == 0


def test_a_subscriber_already_on_the_live_version_keeps_waiting(uri):
    async def go(pub):
        return await pub.next_version("cart", 2, "replica-0", 0.05)

    assert asyncio.run(go(_fresh(uri))) is None  # nothing changed for it: no needless swap


def test_the_registry_pointer_wins_after_an_offline_rollback(uri):
    PolicyRegistry(uri).rollback("cart", to=1)
    version, _, _ = asyncio.run(_fresh(uri).next_version("cart", 2, "replica-0", 1.0))
    assert version == 1  # replicas still on v2 switch back


def test_a_policy_with_nothing_live_is_not_invented(tmp_path):
    reg = PolicyRegistry(tmp_path / "registry")
    reg.publish("cart", _w(1))  # stored, never promoted
    pub = _fresh(reg.uri)
    assert asyncio.run(pub.next_version("cart", 0, "actor-0", 0.05)) is None
    assert pub.stats("cart")["live_version"] is None


def test_the_first_publish_after_a_restart_names_the_live_version_as_parent(uri):
    pub = _fresh(uri)

    async def go():
        version = await pub.publish("cart", _w(3), spec=SPEC)
        return version, await pub.next_version("cart", 2, "actor-0", 1.0)

    version, (live, _, _) = asyncio.run(go())
    reg = PolicyRegistry(uri)
    assert version == live == 3 and reg.get("cart", 3).parent_version == 2
    assert reg.stages("cart")["live"]["history"] == [1, 2, 3]


def test_a_reloaded_version_is_not_measured_as_a_publish(uri):
    pub = _fresh(uri)
    asyncio.run(pub.next_version("cart", 0, "actor-0", 1.0))
    pub.ack("cart", 2, "actor-0")  # re-acked by a subscriber that restarted too: no latency
    assert pub.stats("cart")["latencies_measured"] == 0


def test_a_version_without_a_stored_spec_takes_the_newest_one(tmp_path):
    reg = PolicyRegistry(tmp_path / "registry")
    reg.promote("cart", reg.publish("cart", _w(1), {"info": {"spec": SPEC}}))
    reg.promote("cart", reg.publish("cart", _w(2)))  # stored by a gate, without the spec
    _, _, spec = asyncio.run(_fresh(reg.uri).next_version("cart", 0, None, 1.0))
    assert spec == SPEC
