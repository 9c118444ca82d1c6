"""Policy registry: versioned safetensors weights plus lineage metadata.

Layout under the root (a local directory or any fsspec URL):

    <policy_id>/v000003/weights.safetensors   never pickle
    <policy_id>/v000003/<extra files>         e.g. tokenizer.json
    <policy_id>/v000003/metadata.json         written last: a version exists once this does
    <policy_id>/stages.json                   {"live": {"version": 3, "history": [1, 3]}}

metadata.json holds the lineage (parent version, data range, metrics, the
gate decision) and a sha256 of every file; loading recomputes the hashes and
refuses a file that changed.  Version numbers are claimed atomically, on a
local directory and on an object store alike (core.storage.registry_locks), so two
publishers of one policy never get the same number.

Stage changes (`promote`, `clear`, `rollback`) read-modify-write stages.json
under a lock that holds across processes and hosts (an flock on a local or
shared POSIX directory, a lease object on an object store), so two writers
never lose each other's update.  `expect=` makes the change compare-and-swap:
it raises `StageConflict` unless the stage still points at the version the
caller decided against.  Every method checks `policy_id` against the name
rule first: a name is never a path outside the registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field

from core.config.base import NAME_PATTERN as _NAME
from core.storage.object_lease import LeaseHeld, describe
from core.storage.registry_locks import CLAIM_FILE, claim_version, stage_lock
from core.storage.paths import open_fs

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
STAGES_FILE = "stages.json"
ANY: Any = object()  # `expect=ANY` (the default): change the stage whatever it points at


class RegistryError(RuntimeError):
    """Base of registry errors; the message says which policy and version."""


class PolicyNotFound(RegistryError, LookupError):
    pass


class CorruptPolicyError(RegistryError):
    """A stored file does not match its recorded hash, or cannot be parsed."""


class StageConflict(RegistryError):
    """A compare-and-swap stage change found the stage pointing elsewhere than expected."""


class PolicyMismatchError(RegistryError):
    """Weights whose names or shapes do not fit the model they are loaded into."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    bytes: int


class PolicyVersion(BaseModel):
    """The metadata.json of one version: its lineage and file hashes."""

    model_config = ConfigDict(extra="forbid")
    policy_id: str
    version: int = Field(ge=1)
    parent_version: int | None = None
    created_at: float
    metrics: dict[str, float] = Field(default_factory=dict)
    data_range: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry]


class PublishMetadata(BaseModel):
    """What a publisher may say about a new version (the rest is computed)."""

    model_config = ConfigDict(extra="forbid")
    parent_version: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    data_range: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] | None = None
    info: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class LoadedPolicy:
    meta: PolicyVersion
    weights: dict[str, Any]  # torch tensors (default) or numpy arrays
    files: dict[str, bytes]  # the extra files, verified


class PolicyRegistry:
    def __init__(self, uri: str | os.PathLike[str], create: bool = True):
        """`create=False` opens a registry only to read it: a missing root reads as empty, and
        nothing is created (looking for an encoder must not leave an empty registry behind)."""
        self.uri = str(uri)
        self.fs, self.root = open_fs(self.uri)
        if create:
            self.fs.makedirs(self.root, exist_ok=True)

    def has(self, policy_id: str) -> bool:
        """Whether any version of the policy exists (creates nothing)."""
        return bool(self.versions(policy_id))

    # ---- writing -----------------------------------------------------------------
    def publish(
        self,
        policy_id: str,
        weights: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> int:
        """Store a new version; returns its number. Refuses empty or non-finite weights."""
        _check_policy_id(policy_id)
        meta = PublishMetadata.model_validate(dict(metadata or {}))
        blob = _serialize(policy_id, weights)
        payload = {WEIGHTS_FILE: blob, **_check_files(policy_id, files or {})}
        if meta.parent_version is not None:
            self.get(policy_id, meta.parent_version)  # the parent must exist
        version, vdir = self._claim_version(policy_id)
        entries = {}
        for name, data in payload.items():
            self._write(f"{vdir}/{name}", data)
            entries[name] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        record = PolicyVersion(
            policy_id=policy_id, version=version, created_at=time.time(), files=entries, **meta.model_dump()
        )
        self._write(f"{vdir}/{METADATA_FILE}", record.model_dump_json(indent=2).encode())
        return version

    def update_metadata(self, policy_id: str, version: int, **changes: Any) -> PolicyVersion:
        """Record what was learned about a version after publishing (gate decision, metrics)."""
        allowed = {"metrics", "data_range", "gate", "info"}
        if set(changes) - allowed:
            raise RegistryError(f"cannot update {sorted(set(changes) - allowed)}; allowed: {sorted(allowed)}")
        record = self.get(policy_id, version).model_copy(update=changes)
        record = PolicyVersion.model_validate(record.model_dump())
        self._write(f"{self._vdir(policy_id, version)}/{METADATA_FILE}", record.model_dump_json(indent=2).encode())
        return record

    def promote(self, policy_id: str, version: int, stage: str = "live", expect: Any = ANY) -> None:
        """Point `stage` at `version` (appended to its history).  `expect` (a version, or None for
        "no version"): compare-and-swap, `StageConflict` unless the stage points there now."""
        self.get(policy_id, version)
        with self._locked(policy_id):
            stages = self._stages(policy_id)
            _check_expected(policy_id, stage, stages, expect)
            entry = stages.setdefault(stage, {"version": None, "history": []})
            entry["version"] = version
            entry["history"].append(version)
            self._write(f"{self._pdir(policy_id)}/{STAGES_FILE}", json.dumps(stages, indent=2).encode())

    def clear(self, policy_id: str, stage: str, expect: Any = ANY) -> None:
        """Point a stage at no version (history kept): a canary that ended."""
        with self._locked(policy_id):
            stages = self._stages(policy_id)
            _check_expected(policy_id, stage, stages, expect)
            if stages.get(stage, {}).get("version") is None:
                return
            stages[stage]["version"] = None
            self._write(f"{self._pdir(policy_id)}/{STAGES_FILE}", json.dumps(stages, indent=2).encode())

    def rollback(self, policy_id: str, to: int | None = None, stage: str = "live", expect: Any = ANY) -> int:
        """Make `to` (default: the version live before the current one) live again."""
        if to is not None:
            self.get(policy_id, to)
        with self._locked(policy_id):
            stages = self._stages(policy_id)
            entry = stages.get(stage)
            if not entry or entry["version"] is None:
                raise PolicyNotFound(f"policy {policy_id!r} has no {stage!r} version to roll back from")
            _check_expected(policy_id, stage, stages, expect)
            if to is None:
                earlier = [v for v in entry["history"] if v != entry["version"]]
                if not earlier:
                    raise RegistryError(f"policy {policy_id!r}: no earlier {stage!r} version to roll back to")
                to = earlier[-1]
            entry["version"] = to
            entry["history"].append(to)
            self._write(f"{self._pdir(policy_id)}/{STAGES_FILE}", json.dumps(stages, indent=2).encode())
        return to

    # ---- reading -----------------------------------------------------------------
    def policies(self) -> list[str]:
        try:
            listed = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:  # an object store prefix with nothing published yet
            listed = []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed]
        return sorted(n for n in names if _NAME.match(n) and self.versions(n))

    def versions(self, policy_id: str) -> list[int]:
        pdir = self._pdir(policy_id)
        if not self.fs.isdir(pdir):
            return []
        out = []
        for path in self.fs.ls(pdir, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("v") and name[1:].isdigit() and self.fs.exists(f"{path}/{METADATA_FILE}"):
                out.append(int(name[1:]))
        return sorted(out)

    def get(self, policy_id: str, version: int) -> PolicyVersion:
        path = f"{self._vdir(policy_id, version)}/{METADATA_FILE}"
        if not self.fs.exists(path):
            raise PolicyNotFound(f"policy {policy_id!r} has no version {version}")
        try:
            return PolicyVersion.model_validate_json(self.fs.cat_file(path))
        except ValueError as exc:
            raise CorruptPolicyError(f"policy {policy_id!r} v{version}: unreadable {METADATA_FILE}: {exc}") from None

    def latest(self, policy_id: str, stage: str | None = None) -> PolicyVersion | None:
        """Newest version (stage None) or the version a stage points at; None if there is none."""
        if stage is None:
            versions = self.versions(policy_id)
            return self.get(policy_id, versions[-1]) if versions else None
        entry = self._stages(policy_id).get(stage)
        return self.get(policy_id, entry["version"]) if entry and entry["version"] else None

    def stages(self, policy_id: str) -> dict[str, Any]:
        return self._stages(policy_id)

    def lineage(self, policy_id: str, version: int) -> list[PolicyVersion]:
        """The version and its ancestors, newest first."""
        chain, seen = [], set()
        current: int | None = version
        while current is not None and current not in seen:
            seen.add(current)
            record = self.get(policy_id, current)
            chain.append(record)
            current = record.parent_version
        return chain

    def load(
        self,
        policy_id: str,
        version: int | None = None,
        stage: str | None = None,
        like: Mapping[str, Any] | None = None,
        as_numpy: bool = False,
    ) -> LoadedPolicy:
        """Read and verify a version (explicit, else the stage's, else the newest).

        `like` (a model's state_dict) makes a mismatch in names or shapes an error here
        rather than a confusing failure inside the model.
        """
        meta = self.get(policy_id, version) if version is not None else self.latest(policy_id, stage)
        if meta is None:
            raise PolicyNotFound(f"policy {policy_id!r} has no {stage or 'published'} version")
        vdir = self._vdir(policy_id, meta.version)
        data = {name: self._read_verified(meta, vdir, name, entry) for name, entry in meta.files.items()}
        weights = _deserialize(meta, data.pop(WEIGHTS_FILE), as_numpy)
        if like is not None:
            check_compatible(weights, like, f"policy {policy_id!r} v{meta.version}")
        return LoadedPolicy(meta=meta, weights=weights, files=data)

    # ---- internals ---------------------------------------------------------------
    def _vdir(self, policy_id: str, version: int) -> str:
        return f"{self._pdir(policy_id)}/v{version:06d}"

    def _pdir(self, policy_id: str) -> str:
        _check_policy_id(policy_id)
        return f"{self.root}/{policy_id}"

    def _claim_version(self, policy_id: str) -> tuple[int, str]:
        return claim_version(self.fs, self._pdir(policy_id), lambda v: self._vdir(policy_id, v))

    @contextlib.contextmanager
    def _locked(self, policy_id: str) -> Iterator[None]:
        """The stage lock of one policy (core.storage.registry_locks): never nested."""
        try:
            with stage_lock(self.fs, self.uri, self._pdir(policy_id)):
                yield
        except LeaseHeld as exc:
            raise RegistryError(f"policy {policy_id!r}: the stage lock is held by {describe(exc.holder)}; "
                                "nothing changed") from None

    def _stages(self, policy_id: str) -> dict[str, Any]:
        path = f"{self._pdir(policy_id)}/{STAGES_FILE}"
        if not self.fs.exists(path):
            return {}
        try:
            return json.loads(self.fs.cat_file(path))
        except ValueError as exc:
            raise CorruptPolicyError(f"policy {policy_id!r}: unreadable {STAGES_FILE}: {exc}") from None

    def _read_verified(self, meta: PolicyVersion, vdir: str, name: str, entry: FileEntry) -> bytes:
        where = f"policy {meta.policy_id!r} v{meta.version} {name}"
        try:
            data = self.fs.cat_file(f"{vdir}/{name}")
        except FileNotFoundError:
            raise CorruptPolicyError(f"{where}: file is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != entry.bytes or digest != entry.sha256:
            raise CorruptPolicyError(
                f"{where}: content hash mismatch (expected sha256 {entry.sha256[:12]}… of {entry.bytes} bytes, "
                f"found {digest[:12]}… of {len(data)} bytes); the file is corrupt or was replaced"
            )
        return data

    def _write(self, path: str, data: bytes) -> None:
        if isinstance(self.fs, LocalFileSystem):
            # write-then-rename: a reader never sees half a file, a crash leaves no torn one
            tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"  # unique per writer thread too
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)  # object stores replace whole objects atomically


def check_compatible(weights: Mapping[str, Any], like: Mapping[str, Any], what: str = "weights") -> None:
    """Raise PolicyMismatchError unless names and shapes match exactly."""
    missing = sorted(set(like) - set(weights))
    unexpected = sorted(set(weights) - set(like))
    if missing or unexpected:
        raise PolicyMismatchError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, ref in like.items():
        got, want = tuple(weights[name].shape), tuple(ref.shape)
        if got != want:
            raise PolicyMismatchError(f"{what}: tensor {name!r} has shape {got}, model expects {want}")


def _check_expected(policy_id: str, stage: str, stages: dict[str, Any], expect: Any) -> None:
    if expect is ANY:
        return
    current = (stages.get(stage) or {}).get("version")
    if current != expect:
        raise StageConflict(f"policy {policy_id!r}: {stage!r} is {_said(current)}, not {_said(expect)} as expected "
                            f"(another writer moved it meanwhile); nothing changed")


def _said(version: int | None) -> str:
    return "no version" if version is None else f"v{version}"


def _check_policy_id(policy_id: str) -> None:
    if not isinstance(policy_id, str) or not _NAME.match(policy_id):
        raise RegistryError(f"invalid policy id {policy_id!r}: use 1-64 letters, digits, '_', '.', '-'")


def _check_files(policy_id: str, files: Mapping[str, bytes]) -> dict[str, bytes]:
    for name, data in files.items():
        if name in (WEIGHTS_FILE, METADATA_FILE, CLAIM_FILE) or "/" in name or not _NAME.match(name):
            raise RegistryError(f"policy {policy_id!r}: invalid extra file name {name!r}")
        if not isinstance(data, (bytes, bytearray)):
            raise RegistryError(f"policy {policy_id!r}: extra file {name!r} must be bytes")
    return {name: bytes(data) for name, data in files.items()}


def _serialize(policy_id: str, weights: Mapping[str, Any]) -> bytes:
    import torch
    from safetensors.torch import save

    if not weights:
        raise RegistryError(f"policy {policy_id!r}: refusing to publish empty weights")
    tensors = {}
    for name, value in weights.items():
        t = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RegistryError(f"policy {policy_id!r}: refusing to publish: tensor {name!r} has NaN or inf")
        tensors[name] = t.contiguous()
    return save(tensors)


def _deserialize(meta: PolicyVersion, blob: bytes, as_numpy: bool) -> dict[str, Any]:
    try:
        if as_numpy:
            from safetensors.numpy import load
        else:
            from safetensors.torch import load
        return load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptPolicyError(f"policy {meta.policy_id!r} v{meta.version}: unreadable weights: {exc}") from None
