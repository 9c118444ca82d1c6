"""The replay client: batched, bounded adds routed by id; samples split across shards.

Picklable (it holds only actor handles and config), so the run wiring hands
one to rollout actors, learners and serving alike; they see the
`ReplayStore` contract (add / sample / update_priorities / info), not Ray.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from core.config.replay import ReplaySection, per_shard
from core.replay.store import shard_of
from core.replay.table import KEY, PROBABILITY, ReplayError
from core.replay.wire import to_ipc
from core.data.schemas import schema_for, to_record_batch

SHARD_BITS = 48  # global key = shard << 48 | seq within the shard
ACK_GRACE_S = 5.0  # past an add's own timeout, for the acknowledgement to come back
WEIGHT = "_weight"


@dataclass
class AddTicket:
    """The acknowledgement of one `add`, once `result()` returns."""

    table: str
    refs: list[Any] = field(default_factory=list)

    def done(self) -> bool:
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        return len(ready) == len(self.refs)

    def result(self, timeout_s: float | None = None) -> dict[str, int]:
        acks = ray.get(self.refs, timeout=timeout_s)
        return {"accepted": sum(a["accepted"] for a in acks), "duplicates": sum(a["duplicates"] for a in acks)}


class ReplayClient:
    def __init__(self, shards: list[Any], cfg: ReplaySection, seed: int | None = None):
        self.shards, self.cfg = list(shards), cfg
        self._rng = np.random.default_rng(seed)
        self._pending: deque[AddTicket] = deque()
        self._acked = {"accepted": 0, "duplicates": 0}  # since the last flush()
        self._mass: dict[str, np.ndarray] = {}  # per table: [[rows], [priority mass]] per shard, last seen

    def __getstate__(self) -> dict[str, Any]:
        return {"shards": self.shards, "cfg": self.cfg.model_dump(mode="json")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["shards"], ReplaySection.model_validate(state["cfg"]))

    # ---- add -------------------------------------------------------------------
    def add(self, table: str, batch: Any, timeout_s: float | None = None) -> AddTicket:
        """Send rows to their shards without waiting; at most `max_in_flight` adds are pending.

        `timeout_s`: how long a shard's rate limiter may hold the add (None: the shard's
        `replay.add_timeout_s`) before it fails with ReplayTimeout, nothing written."""
        ticket = self._send(table, batch, timeout_s)
        self._pending.append(ticket)
        while len(self._pending) > self.cfg.max_in_flight:
            self._settle(self._pending.popleft())  # backpressure; raises the shard's error if any
        return ticket

    def add_and_wait(self, table: str, batch: Any, timeout_s: float | None = None, paced: bool = True) -> dict[str, int]:
        """Add and return only once every row is durable on its shard.

        With `timeout_s`, give up after about that long: ReplayTimeout from a shard's rate
        limiter, or Ray's GetTimeoutError while a shard is away (the add may still land later;
        row ids make a retry land once). `paced` False: the rate limiter does not hold the rows."""
        ticket = self._send(table, batch, timeout_s, paced)
        return ticket.result(None if timeout_s is None else timeout_s + ACK_GRACE_S)

    def batch_limit(self, table: str) -> int:
        """The most rows one add may carry to a shard: more are refused (ReplayError)."""
        tcfg = per_shard(self._table_cfg(table), len(self.shards))
        return min(tcfg.max_batch_rows, tcfg.capacity)

    def _send(self, table: str, batch: Any, timeout_s: float | None, paced: bool = True) -> AddTicket:
        rb = to_record_batch(table, self._schema(table), batch)
        owner = shard_of(rb.column("id").to_pylist(), len(self.shards))
        ticket = AddTicket(table)
        for s in np.unique(owner):
            part = rb if len(self.shards) == 1 else rb.filter(pa.array(owner == s))
            ticket.refs.append(self.shards[s].add.remote(table, to_ipc(part), timeout_s, paced))
        return ticket

    def flush(self) -> dict[str, int]:
        """Wait for every pending add; returns what was acknowledged since the last flush.

        A failed add (a shard's ReplayTimeout, say) is raised once every other one is settled."""
        failed: Exception | None = None
        while self._pending:
            try:
                self._settle(self._pending.popleft())
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        total, self._acked = self._acked, {"accepted": 0, "duplicates": 0}
        return total

    def _settle(self, ticket: AddTicket) -> None:
        ack = ticket.result()
        self._acked["accepted"] += ack["accepted"]
        self._acked["duplicates"] += ack["duplicates"]

    # ---- sample ----------------------------------------------------------------
    def sample(self, table: str, n: int, timeout_s: float | None = None) -> pa.RecordBatch:
        """n rows drawn across shards in proportion to their size (or priority mass).

        Adds `_key` (global, for update_priorities), `_probability` (of drawing the
        row from the whole table), `_times_sampled`, and `_weight` (importance weight,
        prioritized tables; 1 otherwise).
        """
        tcfg = self._table_cfg(table)
        sizes, mass = self._shard_sizes(table)
        share = mass / mass.sum() if mass.sum() > 0 else np.full(len(self.shards), 1 / len(self.shards))
        counts = self._rng.multinomial(n, share)
        picked = [(s, c) for s, c in enumerate(counts) if c]
        replies = ray.get([self.shards[s].sample.remote(table, int(c), timeout_s) for s, c in picked])
        parts = []
        for (s, _), (rows, size, shard_mass) in zip(picked, replies):
            sizes[s], mass[s] = size, shard_mass
            keys = pa.array((np.int64(s) << SHARD_BITS) | rows.column(KEY).to_numpy(), pa.int64())
            probs = pa.array(rows.column(PROBABILITY).to_numpy() * share[s], pa.float64())
            rows = rows.set_column(rows.schema.get_field_index(KEY), KEY, keys)
            parts.append(rows.set_column(rows.schema.get_field_index(PROBABILITY), PROBABILITY, probs))
        out = pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
        weights = np.ones(out.num_rows, dtype=np.float32)
        if tcfg.sampler == "prioritized" and out.num_rows:
            # w_i = (N * P(i))^-beta / max w: corrects the bias prioritized draws introduce
            w = (sizes.sum() * out.column(PROBABILITY).to_numpy()) ** (-tcfg.beta)
            weights = (w / w.max()).astype(np.float32)
        return out.append_column(WEIGHT, pa.array(weights, pa.float32()))

    def _shard_sizes(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, priority mass) per shard: as last reported, asked afresh when unknown or empty."""
        known = self._mass.get(table)
        if known is None or known[1].sum() <= 0:
            replies = ray.get([s.sizes.remote(table) for s in self.shards])
            known = self._mass[table] = np.array(replies, dtype=np.float64).T.copy()
        return known[0], known[1]

    # ---- priorities, info, export ----------------------------------------------
    def update_priorities(self, table: str, keys: np.ndarray, priorities: np.ndarray, wait: bool = True) -> int | None:
        """Set priorities by global key; `wait=False` sends without waiting (the learner's hot path)."""
        keys, priorities = np.asarray(keys, np.int64), np.asarray(priorities, np.float64)
        shard = keys >> SHARD_BITS
        seqs = keys & ((1 << SHARD_BITS) - 1)
        refs = [
            self.shards[s].update_priorities.remote(table, seqs[shard == s], priorities[shard == s])
            for s in np.unique(shard)
        ]
        return sum(ray.get(refs)) if wait else None

    def cutoff(self, table: str, timeout_s: float | None = 30.0) -> int:
        """Every shard stops serving `table`'s rows inserted before now (core/replay/table.py
        `cutoff`); returns the rows removed.  Other clients' samples wait until the shards hold
        `min_size` new rows again."""
        self._table_cfg(table)
        removed = sum(ray.get([s.cutoff.remote(table) for s in self.shards], timeout=timeout_s))
        self._mass.pop(table, None)
        return removed

    def info(self) -> dict[str, dict[str, Any]]:
        """Per table, summed over shards (rates too); `shards` keeps each shard's view."""
        per_shard = ray.get([s.info.remote() for s in self.shards])
        out = {}
        for table in self.cfg.tables:
            views = [p[table] for p in per_shard]
            versions = [v for p in views for v in (p["oldest_policy_version"], p["newest_policy_version"]) if v is not None]
            summed = {k: sum(v[k] for v in views) for k in ("size", "inserts", "samples", "duplicates", "disk_bytes")}
            out[table] = {
                **summed,
                "capacity": self.cfg.tables[table].capacity,
                "sampler": self.cfg.tables[table].sampler,
                "inserts_per_s": sum(v["inserts_per_s"] for v in views),
                "samples_per_s": sum(v["samples_per_s"] for v in views),
                "oldest_policy_version": min(versions) if versions else None,
                "newest_policy_version": max(versions) if versions else None,
                "shards": views,
            }
        return out

    def export(self, table: str) -> pa.Table:
        self._table_cfg(table)
        return pa.concat_tables(ray.get([s.export.remote(table) for s in self.shards]))

    def to_ray_dataset(self, table: str):
        return ray.data.from_arrow(self.export(table))

    def to_hf_dataset(self, table: str):
        from core.replay.offline import to_hf_dataset

        return to_hf_dataset(self.export(table))

    def to_parquet(self, table: str, path: str):
        from core.replay.offline import to_parquet

        return to_parquet(self.export(table), path)

    def _table_cfg(self, table: str):
        if table not in self.cfg.tables:
            raise ReplayError(f"unknown table {table!r}; declared tables: {sorted(self.cfg.tables)}")
        return self.cfg.tables[table]

    def _schema(self, table: str) -> pa.Schema:
        tcfg = self._table_cfg(table)
        return schema_for(tcfg.kind, obs_dim=tcfg.obs_dim) if tcfg.kind == "transitions" else schema_for(tcfg.kind)
