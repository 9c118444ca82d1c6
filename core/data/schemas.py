"""Arrow schemas of the experience tables, and validation that names the column.

Every row carries who produced it (`source`, `actor_id`) and with which policy
(`policy_id`, `policy_version`), so learners can drop stale data and lineage
can say what a version was trained on.  `SCHEMA_VERSION` is stamped into the
schema metadata; bump it when a column changes meaning.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 1
SOURCES = ("rollout", "feedback", "corpus", "client")

COMMON_FIELDS: tuple[pa.Field, ...] = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("table", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("actor_id", pa.string(), nullable=False),
    pa.field("policy_id", pa.string(), nullable=False),
    pa.field("policy_version", pa.int64(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
)


class SchemaError(ValueError):
    """A batch that does not fit its table; names the table and the column."""

    def __init__(self, table: str, column: str | None, reason: str):
        self.table, self.column, self.reason = table, column, reason
        where = f"table {table!r}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # crosses process boundaries (Ray) intact
        return (type(self), (self.table, self.column, self.reason))


def _obs_type(obs_dim: int | None) -> pa.DataType:
    # Fixed-size lists keep observations one contiguous float buffer (no
    # per-row objects); a discrete observation is a length-1 vector.
    return pa.list_(pa.float32(), obs_dim) if obs_dim else pa.list_(pa.float32())


def transitions_schema(obs_dim: int | None = None) -> pa.Schema:
    obs = _obs_type(obs_dim)
    payload = (
        pa.field("obs", obs, nullable=False),
        pa.field("action", pa.int64(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("next_obs", obs, nullable=False),
        pa.field("terminated", pa.bool_(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("logp", pa.float32(), nullable=True),
        # gamma**k for the k rewards folded into `reward`: k < n where an n-step row was cut
        # short by the end of an episode (a truncated one still bootstraps).  Null: gamma**n.
        pa.field("discount", pa.float32(), nullable=True),
    )
    return _with_meta(COMMON_FIELDS + payload, "transitions")


def text_schema() -> pa.Schema:
    return _with_meta(COMMON_FIELDS + (pa.field("text", pa.string(), nullable=False),), "text")


def feedback_schema() -> pa.Schema:
    payload = (
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("prediction", pa.int64(), nullable=False),
        pa.field("probs", pa.list_(pa.float32()), nullable=False),
        pa.field("label", pa.int64(), nullable=True),
        pa.field("reward", pa.float32(), nullable=True),
        # the probability `prediction` was served with, and the serving distribution it was drawn
        # from (core/stats/exploration.py); null in rows logged before serving logged them
        pa.field("propensity", pa.float32(), nullable=True),
        pa.field("action_probs", pa.list_(pa.float32()), nullable=True),
        # the second text of a pair input (premise / hypothesis); null for a single text and in rows
        # logged before pairs were served (segments without the column read it as null)
        pa.field("text_pair", pa.string(), nullable=True),
    )
    return _with_meta(COMMON_FIELDS + payload, "feedback")


def completions_schema() -> pa.Schema:
    """A served completion joined with its feedback: thumbs, a reward, or a preference over another
    completion of the same prompt (its `rejected_*` columns).  The token ids and both log-probabilities
    are the sampling version's (core/models/generator.py): `logprobs` under the model, the learner's
    importance-ratio denominator; `sampling_logprobs` under the distribution that drew each token."""
    ids, floats = pa.list_(pa.int32()), pa.list_(pa.float32())
    payload = (
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),  # one request's prompt: its n completions share it
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_ids", ids, nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("token_ids", ids, nullable=False),
        pa.field("logprobs", floats, nullable=False),
        pa.field("sampling_logprobs", floats, nullable=False),
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("top_p", pa.float32(), nullable=False),
        pa.field("feedback", pa.string(), nullable=False),  # "thumbs", "reward" or "preference"
        pa.field("thumbs_up", pa.bool_(), nullable=True),
        pa.field("reward", pa.float32(), nullable=True),
        # a preference: this completion was preferred over the rejected one (same prompt, same group)
        pa.field("rejected_event_id", pa.string(), nullable=True),
        pa.field("rejected_completion", pa.string(), nullable=True),
        pa.field("rejected_token_ids", ids, nullable=True),
        pa.field("rejected_logprobs", floats, nullable=True),
        pa.field("rejected_sampling_logprobs", floats, nullable=True),
        pa.field("rejected_policy_version", pa.int64(), nullable=True),
    )
    return _with_meta(COMMON_FIELDS + payload, "completions")


def decisions_schema() -> pa.Schema:
    """A served decision joined with its reward (core/decisions/): the context and the actions it
    ranked as the request sent them (JSON: their namespaces vary per request), the action served,
    the probability it was served with and every action's, and where the reward came from
    (`client`, or `default`: none came within the policy's reward wait)."""
    payload = (
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),  # JSON: {namespace: {feature: value}}
        pa.field("actions", pa.string(), nullable=False),  # JSON: [{id, features}], excluded ones left out
        pa.field("chosen", pa.int64(), nullable=False),  # index into actions
        pa.field("action_id", pa.string(), nullable=False),
        pa.field("propensity", pa.float32(), nullable=False),
        pa.field("probs", pa.list_(pa.float32()), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("reward_source", pa.string(), nullable=False),
    )
    return _with_meta(COMMON_FIELDS + payload, "decisions")


SCHEMAS = {"transitions": transitions_schema, "text": text_schema, "feedback": feedback_schema,
           "completions": completions_schema, "decisions": decisions_schema}


def schema_for(kind: str, **kwargs: Any) -> pa.Schema:
    if kind not in SCHEMAS:
        raise SchemaError(kind, None, f"unknown table kind; known: {sorted(SCHEMAS)}")
    return SCHEMAS[kind](**kwargs)


def _with_meta(fields: tuple[pa.Field, ...], kind: str) -> pa.Schema:
    return pa.schema(list(fields), metadata={b"schema_version": str(SCHEMA_VERSION).encode(), b"kind": kind.encode()})


def schema_version(schema: pa.Schema) -> int:
    meta = schema.metadata or {}
    if b"schema_version" not in meta:
        raise SchemaError(str(meta.get(b"kind", b"?"), "utf-8"), None, "schema carries no schema_version")
    return int(meta[b"schema_version"])


def to_record_batch(table: str, schema: pa.Schema, batch: pa.RecordBatch | pa.Table | Mapping[str, Any]) -> pa.RecordBatch:
    """Validate `batch` against `schema` and return it in exactly that schema.

    Raises SchemaError naming the first offending column: missing or extra
    columns, a type that does not cast safely, nulls in a required column,
    NaN/inf in a float column, a `source` outside SOURCES.
    """
    columns = _columns(table, batch)
    missing = [f.name for f in schema if f.name not in columns and not f.nullable]
    if missing:
        raise SchemaError(table, missing[0], "missing column")
    extra = [name for name in columns if schema.get_field_index(name) < 0]
    if extra:
        raise SchemaError(table, extra[0], "not a column of this table")
    n = _row_count(table, columns)
    arrays = [_column(table, field, columns.get(field.name), n) for field in schema]
    out = pa.RecordBatch.from_arrays(arrays, schema=schema)
    _check_values(table, out)
    return out


def _columns(table: str, batch: Any) -> dict[str, Any]:
    if isinstance(batch, pa.RecordBatch):
        return {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
    if isinstance(batch, pa.Table):
        return {name: batch.column(name).combine_chunks() for name in batch.schema.names}
    if isinstance(batch, Mapping):
        return dict(batch)
    raise SchemaError(table, None, f"batch must be a pyarrow RecordBatch/Table or a mapping of columns, got {type(batch).__name__}")


def _row_count(table: str, columns: dict[str, Any]) -> int:
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        name = min(lengths, key=lambda k: lengths[k])
        raise SchemaError(table, name, f"columns have different lengths: {lengths}")
    return next(iter(lengths.values()), 0)


def _column(table: str, field: pa.Field, values: Any, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, type=field.type)
    try:
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else _to_arrow(values, field.type)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if not arr.type.equals(field.type):
            arr = arr.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
        raise SchemaError(table, field.name, f"expected {field.type}: {_short(exc)}") from None
    if not field.nullable and arr.null_count:
        raise SchemaError(table, field.name, f"{arr.null_count} null value(s) in a required column")
    return arr


def _to_arrow(values: Any, typ: pa.DataType) -> pa.Array:
    if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_fixed_size_list(typ):
        flat = pa.array(values.astype(np.float32, copy=False).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    if isinstance(values, np.ndarray) and values.ndim == 2:
        values = list(values)
    return pa.array(values, type=typ, from_pandas=False)


def _check_values(table: str, batch: pa.RecordBatch) -> None:
    for field, col in zip(batch.schema, batch.columns):
        leaf = col
        while pa.types.is_list(leaf.type) or pa.types.is_fixed_size_list(leaf.type):
            leaf = leaf.flatten()
        if pa.types.is_floating(leaf.type) and len(leaf):
            n_finite = pc.sum(pc.is_finite(leaf)).as_py() or 0
            bad = len(leaf) - leaf.null_count - n_finite
            if bad:
                raise SchemaError(table, field.name, f"{bad} NaN or inf value(s)")
    if "source" in batch.schema.names:
        bad = pc.invert(pc.is_in(batch.column("source"), value_set=pa.array(SOURCES)))
        if pc.any(bad).as_py():
            raise SchemaError(table, "source", f"must be one of {SOURCES}")


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
