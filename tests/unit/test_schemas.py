import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from core.data.schemas import SCHEMA_VERSION, SchemaError, schema_for, schema_version, to_record_batch, transitions_schema


def _common(n, table="transitions", source="rollout"):
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "id": [f"r{i}" for i in range(n)],
        "table": [table] * n,
        "source": [source] * n,
        "actor_id": ["a0"] * n,
        "policy_id": ["cartpole"] * n,
        "policy_version": [1] * n,
        "created_at": [now] * n,
    }


def _transitions(n=4, dim=4):
    obs = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return {
        **_common(n),
        "obs": obs,
        "action": np.zeros(n, dtype=np.int64),
        "reward": np.ones(n, dtype=np.float32),
        "next_obs": obs + 1,
        "terminated": [False] * n,
        "truncated": [False] * n,
    }


def test_every_schema_is_versioned():
    for kind in ("transitions", "text", "feedback"):
        assert schema_version(schema_for(kind)) == SCHEMA_VERSION
    assert "policy_version" in schema_for("text").names


def test_valid_transitions_become_a_fixed_size_batch():
    batch = to_record_batch("transitions", transitions_schema(4), _transitions())
    assert batch.num_rows == 4
    assert batch.schema.field("obs").type == pa.list_(pa.float32(), 4)
    assert batch.column("logp").null_count == 4  # optional column filled with nulls


def test_missing_column_is_named():
    data = _transitions()
    del data["reward"]
    with pytest.raises(SchemaError, match="table 'transitions', column 'reward': missing column"):
        to_record_batch("transitions", transitions_schema(4), data)


def test_extra_column_is_named():
    data = {**_transitions(), "bogus": [1, 2, 3, 4]}
    with pytest.raises(SchemaError, match="column 'bogus'"):
        to_record_batch("transitions", transitions_schema(4), data)


def test_wrong_type_is_named():
    data = {**_transitions(), "action": ["left", "right", "left", "left"]}
    with pytest.raises(SchemaError, match="column 'action': expected int64"):
        to_record_batch("transitions", transitions_schema(4), data)


def test_wrong_obs_width_is_named():
    with pytest.raises(SchemaError, match="column 'obs'"):
        to_record_batch("transitions", transitions_schema(3), _transitions(dim=4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    data = _transitions()
    data["reward"][2] = bad
    with pytest.raises(SchemaError, match="column 'reward': 1 NaN or inf"):
        to_record_batch("transitions", transitions_schema(4), data)
    data = _transitions()
    data["obs"][1, 3] = bad
    with pytest.raises(SchemaError, match="column 'obs'"):
        to_record_batch("transitions", transitions_schema(4), data)


def test_nulls_in_required_column_and_unknown_source():
    data = {**_common(2, "text"), "text": ["hello", None]}
    with pytest.raises(SchemaError, match="column 'text': 1 null"):
        to_record_batch("text", schema_for("text"), data)
    data = {**_common(1, "text", source="telepathy"), "text": ["hi"]}
    with pytest.raises(SchemaError, match="column 'source'"):
        to_record_batch("text", schema_for("text"), data)


def test_ragged_columns_and_unknown_kind():
    data = {**_common(2, "text"), "text": ["only one"]}
    with pytest.raises(SchemaError, match="different lengths"):
        to_record_batch("text", schema_for("text"), data)
    with pytest.raises(SchemaError, match="unknown table kind"):
        schema_for("images")


def test_feedback_accepts_label_or_reward():
    data = {
        **_common(2, "feedback", "feedback"),
        "event_id": ["e1", "e2"],
        "text": ["好", "差"],
        "prediction": [1, 0],
        "probs": [[0.2, 0.8], [0.9, 0.1]],
        "label": [1, None],
        "reward": [None, 1.0],
    }
    batch = to_record_batch("feedback", schema_for("feedback"), data)
    assert batch.column("label").to_pylist() == [1, None]


def test_record_batch_input_is_checked_too():
    batch = to_record_batch("transitions", transitions_schema(4), _transitions())
    assert to_record_batch("transitions", transitions_schema(4), pa.Table.from_batches([batch])).equals(batch)
    with pytest.raises(SchemaError, match="column 'obs'"):
        to_record_batch("transitions", transitions_schema(5), batch)
