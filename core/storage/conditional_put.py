"""Writes that happen only if the store still holds what the writer last saw.

    create(path, data)        only if nothing is there       S3: If-None-Match: *
    replace(path, data, tag)  only if the object is `tag`    S3: If-Match: <ETag>
    delete(path, tag)         only if the object is `tag`    S3: If-Match: <ETag>

A refused condition raises `Precondition`.  These are the one primitive that
lets processes on different hosts agree through an object store: the number a
publisher claims, the lease a run holds on its storage, the stage lock.

S3 (and stores that speak its API with conditional writes: SeaweedFS, MinIO,
recent AWS S3) decides the condition on the server, atomically.  memory://
lives in one process, so a process lock is atomic there too.  Any other fsspec
store gets the same calls done as check-then-write: `atomic` is False, and the
callers say that what they guard is best effort there.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)
_MEMORY_MU = threading.Lock()
_PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class Precondition(RuntimeError):
    """The store did not hold what the condition named: the object exists, or changed."""


def precondition_failed(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a store refusing a condition: an
    S3 412 PreconditionFailed or 409 ConditionalRequestConflict, or fsspec's FileExistsError."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (Precondition, FileExistsError)):
            return True
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if str(error.get("Code")) in _PRECONDITION_CODES or status in (409, 412):
                return True
        cur = cur.__cause__ or cur.__context__
    return False


class ConditionalStore:
    """Conditional writes on one fsspec filesystem; paths as that filesystem names them."""

    def __init__(self, fs: Any):
        self.fs = fs
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.kind = "s3" if protocol in ("s3", "s3a") else "memory" if protocol == "memory" else "other"
        self.atomic = self.kind != "other"

    # ---- reading -----------------------------------------------------------
    def read(self, path: str) -> tuple[bytes, str] | None:
        """(data, tag) of the object now, or None when there is none."""
        if self.kind == "s3":
            return self._s3_get(path)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        return data, _digest(data)

    # ---- conditional writes ------------------------------------------------
    def create(self, path: str, data: bytes) -> str:
        """Write `data` unless an object is at `path`; returns its tag."""
        if self.kind == "s3":
            return self._s3_put(path, data, IfNoneMatch="*")
        with self._mutex():
            try:  # fsspec's own "create": a check-then-write unless the backend has better
                self.fs.pipe_file(path, data, mode="create")
            except Exception as exc:
                if precondition_failed(exc):
                    raise Precondition(f"{path} exists") from exc
                raise
        return _digest(data)

    def replace(self, path: str, data: bytes, tag: str) -> str:
        """Write `data` only if the object at `path` is still the one tagged `tag`."""
        if self.kind == "s3":
            return self._s3_put(path, data, IfMatch=tag)
        with self._mutex():
            self._expect(path, tag)
            self.fs.pipe_file(path, data)
        return _digest(data)

    def delete(self, path: str, tag: str) -> None:
        """Delete the object at `path` only if it is still the one tagged `tag` (gone already: fine)."""
        if self.kind == "s3":
            bucket, key, _ = self.fs.split_path(path)
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=tag)
            except FileNotFoundError:
                return
            except Exception as exc:
                if precondition_failed(exc):
                    raise Precondition(f"{path} changed since it was read") from exc
                raise
            return
        with self._mutex():
            try:
                self._expect(path, tag)
            except FileNotFoundError:
                return
            self.fs.rm_file(path)

    # ---- internals ---------------------------------------------------------
    def _mutex(self):
        return _MEMORY_MU if self.kind == "memory" else _NoLock()

    def _expect(self, path: str, tag: str) -> None:
        found = self.read(path)
        if found is None:
            raise FileNotFoundError(path)
        if found[1] != tag:
            raise Precondition(f"{path} changed since it was read")

    def _s3_put(self, path: str, data: bytes, **condition: str) -> str:
        bucket, key, _ = self.fs.split_path(path)
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as exc:
            if precondition_failed(exc):
                what = "exists" if "IfNoneMatch" in condition else "changed since it was read"
                raise Precondition(f"{path} {what}") from exc
            raise
        self.fs.invalidate_cache(path)
        return out["ETag"]

    def _s3_get(self, path: str) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(path)

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                return await body.read(), resp["ETag"]

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
