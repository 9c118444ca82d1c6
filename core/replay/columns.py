"""Columnar ring buffers: a table's rows by slot (seq % capacity), one ring per column.

Three kinds, chosen from the Arrow type:

- fixed width (numbers, bools, timestamps, fixed-size lists of numbers):
  a preallocated numpy array; a sample is one fancy-index per column.
- low-cardinality strings (`table`, `source`, `actor_id`, `policy_id`):
  int32 codes into a small dictionary, decoded back to strings on the way out.
- everything else (ids, text, variable-length lists): an object ring holding
  the Python values; used by text and feedback tables, whose rates are low.

Arrow's own `take` on a chunked table concatenates every chunk first, so a
draw costs time in proportion to the whole table; with these rings a draw
costs in proportion to the rows drawn.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

LOW_CARDINALITY = frozenset({"table", "source", "actor_id", "policy_id"})


class _Ring:
    def __init__(self, field: pa.Field, capacity: int):
        self.field, self.capacity = field, capacity
        self.valid = np.ones(capacity, dtype=bool) if field.nullable else None

    def put(self, slots: np.ndarray, col: pa.Array) -> None:
        if self.valid is not None:
            self.valid[slots] = col.is_valid().to_numpy(zero_copy_only=False)

    def mask(self, slots: np.ndarray) -> np.ndarray | None:
        if self.valid is None:
            return None
        valid = self.valid[slots]
        return None if valid.all() else ~valid


class FixedRing(_Ring):
    def __init__(self, field: pa.Field, capacity: int):
        super().__init__(field, capacity)
        typ = field.type
        self.width = typ.list_size if pa.types.is_fixed_size_list(typ) else None
        value_type = typ.value_type if self.width else typ
        self.storage_type = pa.int64() if pa.types.is_timestamp(value_type) else value_type
        dtype = np.bool_ if pa.types.is_boolean(value_type) else self.storage_type.to_pandas_dtype()
        self.data = np.zeros((capacity, self.width) if self.width else capacity, dtype=dtype)

    def put(self, slots: np.ndarray, col: pa.Array) -> None:
        super().put(slots, col)
        if self.width:
            values = col.flatten() if col.null_count == 0 else col.fill_null(pa.scalar([0] * self.width, col.type)).flatten()
            self.data[slots] = values.to_numpy(zero_copy_only=False).reshape(-1, self.width)
        else:
            if pa.types.is_timestamp(col.type):
                col = col.cast(pa.int64())
            blank = pa.scalar(False) if pa.types.is_boolean(col.type) else 0  # a null's slot; `valid` marks it
            self.data[slots] = (col.to_numpy(zero_copy_only=False) if col.null_count == 0
                                else col.fill_null(blank).to_numpy(zero_copy_only=False))

    def take(self, slots: np.ndarray) -> pa.Array:
        values = self.data[slots]
        mask = self.mask(slots)
        if self.width:
            flat = pa.array(values.reshape(-1), type=self.storage_type)
            return pa.FixedSizeListArray.from_arrays(flat, self.width, mask=pa.array(mask) if mask is not None else None)
        arr = pa.array(values, type=self.storage_type, mask=mask)
        return arr.cast(self.field.type) if self.storage_type != self.field.type else arr


class CodeRing(_Ring):
    """Strings with few distinct values, stored as int32 codes."""

    def __init__(self, field: pa.Field, capacity: int):
        super().__init__(field, capacity)
        self.codes = np.zeros(capacity, dtype=np.int32)
        self.values: list[str] = []
        self.lookup: dict[str, int] = {}

    def put(self, slots: np.ndarray, col: pa.Array) -> None:
        super().put(slots, col)
        encoded = col.dictionary_encode()
        local = [self._code(v) for v in encoded.dictionary.to_pylist()]
        idx = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
        self.codes[slots] = np.asarray(local, dtype=np.int32)[idx] if local else 0

    def _code(self, value: str | None) -> int:
        if value not in self.lookup:
            self.lookup[value] = len(self.values)
            self.values.append(value)
        return self.lookup[value]

    def take(self, slots: np.ndarray) -> pa.Array:
        mask = self.mask(slots)
        indices = pa.array(self.codes[slots], pa.int32(), mask=mask)
        return pa.DictionaryArray.from_arrays(indices, pa.array(self.values, pa.string())).dictionary_decode()


class ObjectRing(_Ring):
    def __init__(self, field: pa.Field, capacity: int):
        super().__init__(field, capacity)
        self.data = np.empty(capacity, dtype=object)

    def put(self, slots: np.ndarray, col: pa.Array, values: list | None = None) -> None:
        # no validity ring: None is kept as a value
        self.data[slots] = values if values is not None else col.to_pylist()

    def take(self, slots: np.ndarray) -> pa.Array:
        return pa.array(self.data[slots].tolist(), type=self.field.type)


def ring_for(field: pa.Field, capacity: int) -> _Ring:
    typ = field.type
    value = typ.value_type if pa.types.is_fixed_size_list(typ) else typ
    if pa.types.is_integer(value) or pa.types.is_floating(value) or pa.types.is_boolean(value) or pa.types.is_timestamp(value):
        return FixedRing(field, capacity)
    if pa.types.is_string(typ) and field.name in LOW_CARDINALITY:
        return CodeRing(field, capacity)
    return ObjectRing(field, capacity)


class ColumnRings:
    """All columns of one table, written and read by slot."""

    def __init__(self, schema: pa.Schema, capacity: int):
        self.schema, self.capacity = schema, capacity
        self.rings = [ring_for(field, capacity) for field in schema]

    def put(self, seq: int, batch: pa.RecordBatch, ids: list[str] | None = None) -> np.ndarray:
        """Write rows seq.. into their slots; returns the slots."""
        slots = np.arange(seq, seq + batch.num_rows) % self.capacity
        for ring, col in zip(self.rings, batch.columns):
            if ids is not None and ring.field.name == "id":
                ring.put(slots, col, ids)
            else:
                ring.put(slots, col)
        return slots

    def take(self, slots: np.ndarray) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([ring.take(slots) for ring in self.rings], schema=self.schema)

    def ids(self, slots: np.ndarray) -> list[str]:
        ring = self.rings[self.schema.get_field_index("id")]
        return ring.data[slots].tolist()
