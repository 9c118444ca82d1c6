import json
import uuid

import numpy as np
import pytest
import torch

from core.storage.registry import (
    CorruptPolicyError,
    PolicyMismatchError,
    PolicyNotFound,
    PolicyRegistry,
    RegistryError,
)


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g)}


@pytest.fixture
def reg(tmp_path):
    return PolicyRegistry(tmp_path / "registry")


def test_publish_and_load_round_trip_with_lineage(reg):
    v1 = reg.publish("cartpole", _weights(1), {"metrics": {"eval_return": 20.0}, "data_range": {"rows": [0, 100]}})
    v2 = reg.publish(
        "cartpole", _weights(2), {"parent_version": v1, "metrics": {"eval_return": 200.0}}, files={"notes.txt": b"hi"}
    )
    assert (v1, v2) == (1, 2)
    loaded = reg.load("cartpole", v2)
    assert torch.equal(loaded.weights["fc.weight"], _weights(2)["fc.weight"])
    assert loaded.files == {"notes.txt": b"hi"}
    assert loaded.meta.parent_version == 1
    assert [m.version for m in reg.lineage("cartpole", v2)] == [2, 1]
    assert reg.latest("cartpole").version == 2
    assert reg.policies() == ["cartpole"]


def test_numpy_weights_and_numpy_load(reg):
    v = reg.publish("taxi", {"q": np.arange(12, dtype=np.float32).reshape(3, 4)})
    assert np.array_equal(reg.load("taxi", v, as_numpy=True).weights["q"], np.arange(12, dtype=np.float32).reshape(3, 4))


def test_promote_and_rollback(reg):
    for seed in range(3):
        reg.promote("p", reg.publish("p", _weights(seed)))
    assert reg.latest("p", "live").version == 3
    assert reg.rollback("p") == 2
    assert reg.latest("p", "live").version == 2
    assert reg.rollback("p", to=1) == 1
    assert reg.load("p", stage="live").meta.version == 1
    with pytest.raises(PolicyNotFound):
        reg.rollback("nobody")


def test_corrupt_weights_are_refused(reg, tmp_path):
    v = reg.publish("p", _weights())
    path = tmp_path / "registry" / "p" / f"v{v:06d}" / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptPolicyError, match="content hash mismatch"):
        reg.load("p", v)


def test_replaced_file_is_refused_even_if_valid(reg, tmp_path):
    v1 = reg.publish("p", _weights(1))
    v2 = reg.publish("p", _weights(2))
    root = tmp_path / "registry" / "p"
    (root / f"v{v1:06d}" / "weights.safetensors").write_bytes((root / f"v{v2:06d}" / "weights.safetensors").read_bytes())
    with pytest.raises(CorruptPolicyError, match="v1 weights.safetensors"):
        reg.load("p", v1)


def test_missing_file_and_bad_metadata(reg, tmp_path):
    v = reg.publish("p", _weights(), files={"tok.json": b"{}"})
    vdir = tmp_path / "registry" / "p" / f"v{v:06d}"
    (vdir / "tok.json").unlink()
    with pytest.raises(CorruptPolicyError, match="missing"):
        reg.load("p", v)
    (vdir / "metadata.json").write_text("{not json")
    with pytest.raises(CorruptPolicyError, match="metadata.json"):
        reg.get("p", v)


def test_mismatched_model_is_refused(reg):
    v = reg.publish("p", _weights())
    with pytest.raises(PolicyMismatchError, match="shape"):
        reg.load("p", v, like={"fc.weight": torch.zeros(5, 3), "fc.bias": torch.zeros(4)})
    with pytest.raises(PolicyMismatchError, match="missing"):
        reg.load("p", v, like={"other.weight": torch.zeros(4, 3)})
    reg.load("p", v, like=_weights())  # the right shapes load


def test_nan_and_empty_weights_are_never_published(reg):
    bad = _weights()
    bad["fc.bias"][0] = float("nan")
    with pytest.raises(RegistryError, match="NaN or inf"):
        reg.publish("p", bad)
    with pytest.raises(RegistryError, match="empty"):
        reg.publish("p", {})
    assert reg.versions("p") == []


def test_bad_names_and_unknown_metadata(reg):
    with pytest.raises(RegistryError, match="invalid policy id"):
        reg.publish("../escape", _weights())
    with pytest.raises(RegistryError, match="invalid extra file name"):
        reg.publish("p", _weights(), files={"../x": b""})
    with pytest.raises(ValueError):
        reg.publish("p", _weights(), {"colour": "blue"})
    with pytest.raises(PolicyNotFound):
        reg.publish("p", _weights(), {"parent_version": 7})


def test_gate_decision_recorded_after_publish(reg):
    v = reg.publish("p", _weights())
    reg.update_metadata("p", v, gate={"decision": "promote", "p_value": 0.3})
    assert reg.get("p", v).gate == {"decision": "promote", "p_value": 0.3}
    reg.load("p", v)  # the hash covers the weights, not the lineage notes
    with pytest.raises(RegistryError):
        reg.update_metadata("p", v, files={})


def test_metadata_is_plain_json(reg, tmp_path):
    v = reg.publish("p", _weights(), {"metrics": {"loss": 0.5}})
    meta = json.loads((tmp_path / "registry" / "p" / f"v{v:06d}" / "metadata.json").read_text())
    assert meta["version"] == v and meta["metrics"] == {"loss": 0.5}
    assert set(meta["files"]["weights.safetensors"]) == {"sha256", "bytes"}


def test_any_fsspec_url_works():
    reg = PolicyRegistry(f"memory://evolve-test-{uuid.uuid4().hex}")
    v = reg.publish("p", _weights())
    reg.promote("p", v)
    assert torch.equal(reg.load("p", stage="live").weights["fc.bias"], _weights()["fc.bias"])


@pytest.mark.parametrize("bad", ["../escape", "a/b", "p\n", "", ".hidden"])
def test_reads_and_stage_changes_check_the_policy_id_too(reg, tmp_path, bad):
    (tmp_path / "outside").mkdir()
    calls = [lambda: reg.get(bad, 1), lambda: reg.versions(bad), lambda: reg.latest(bad, "live"),
             lambda: reg.load(bad), lambda: reg.stages(bad), lambda: reg.has(bad), lambda: reg.promote(bad, 1),
             lambda: reg.clear(bad, "live"), lambda: reg.rollback(bad)]
    for call in calls:
        with pytest.raises(RegistryError, match="invalid policy id"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "registry"]  # nothing made outside


def test_a_name_with_a_trailing_newline_is_not_a_name(reg):
    from core.config.base import NAME_PATTERN

    assert NAME_PATTERN.match("cartpole") and not NAME_PATTERN.match("cartpole\n")
    with pytest.raises(RegistryError, match="invalid policy id"):
        reg.publish("cartpole\n", _weights())
    with pytest.raises(RegistryError, match="invalid extra file name"):
        reg.publish("p", _weights(), files={"notes.txt\n": b""})


def test_the_claim_marker_is_not_an_extra_file_name(reg):
    with pytest.raises(RegistryError, match="invalid extra file name"):
        reg.publish("p", _weights(), files={"claim.json": b"{}"})


def test_threads_publishing_on_an_object_store_get_distinct_versions():
    import threading

    reg = PolicyRegistry(f"memory://evolve-test-{uuid.uuid4().hex}")
    got, start = [], threading.Barrier(4)

    def publish():
        start.wait()
        for _ in range(5):
            got.append(reg.publish("p", _weights()))

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == list(range(1, 21)) and reg.versions("p") == list(range(1, 21))
