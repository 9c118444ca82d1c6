import torch

from core.storage.registry import PolicyRegistry
from serving.catalog import describe_policies


def test_catalog_lists_versions_live_and_lineage(tmp_path):
    reg = PolicyRegistry(tmp_path)
    v1 = reg.publish("cartpole", {"w": torch.ones(2)})
    v2 = reg.publish("cartpole", {"w": torch.zeros(2)}, {"parent_version": v1, "metrics": {"eval_return": 9.5}})
    reg.promote("cartpole", v1)
    view = describe_policies(reg)
    (policy,) = view["policies"]
    assert policy["policy_id"] == "cartpole"
    assert policy["live_version"] == 1 and policy["latest_version"] == 2
    assert [v["live"] for v in policy["versions"]] == [True, False]
    assert policy["versions"][1]["parent_version"] == v1
    assert policy["versions"][1]["metrics"] == {"eval_return": 9.5}
    reg.promote("cartpole", v2, stage="canary")  # a candidate on live traffic
    (policy,) = describe_policies(reg)["policies"]
    assert [v["canary"] for v in policy["versions"]] == [False, True] and policy["stages"]["canary"] == 2
    reg.clear("cartpole", "canary")
    assert describe_policies(reg)["policies"][0]["stages"] == {"live": 1, "canary": None}
    assert describe_policies(PolicyRegistry(tmp_path / "empty")) == {"policies": []}
