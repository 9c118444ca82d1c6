"""Where a run's shared state lives: a local directory or any fsspec URL.

    run.storage: s3://bucket/evolve/cluster   ->  .../registry  .../replay  .../train
    registry.uri / replay.dir                 ->  override one of them

On one node every path is shared.  On many, each Ray process reads the path on
its own node, so the registry, the replay segments and Ray Train's storage must
name one place every node sees: an object store URL (s3://, gs://, ...) or a
shared filesystem mounted at the same absolute path on every node.  A relative
path names a different directory on each node (and on the head, the driver's
working directory), and memory:// one per process: `node_local_reason` says why
such a path cannot be shared, and `shared_storage_problems` turns that into one
line per key.  An absolute local path is taken on trust: nothing on one node can
see whether the others mount the same filesystem there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Schemes whose data lives in one process or on one node's disk.
NODE_LOCAL_SCHEMES = ("memory", "file", "local")
SHARED_HINT = "a shared filesystem path mounted on every node, or s3://bucket/prefix"


def scheme(uri: str | os.PathLike[str]) -> str:
    """'' for a plain path, else the URL scheme ('s3', 'file', 'memory', ...)."""
    text = str(uri)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isidentifier() else ""


def is_url(uri: str | os.PathLike[str]) -> bool:
    """True for a URL fsspec opens remotely (not a plain path, not file://)."""
    return scheme(uri) not in ("", "file", "local")


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The filesystem path of a plain path or a file:// URL."""
    text = str(uri)
    return Path(text.split("://", 1)[1]) if scheme(text) in ("file", "local") else Path(text)


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """`uri`/part/part, keeping a URL's scheme and a path's separators."""
    if is_url(uri):
        return "/".join([str(uri).rstrip("/"), *parts])
    return str(Path(uri).joinpath(*parts))


def absolute(uri: str | os.PathLike[str]) -> str:
    """URLs as they are; a local path made absolute against this process's working directory,
    which Ray workers do not share (their working directory is their own)."""
    if is_url(uri):
        return str(uri)
    return str(local_path(uri).expanduser().resolve())


def node_local_reason(uri: str | os.PathLike[str]) -> str | None:
    """Why `uri` names storage that other nodes cannot see, or None when it may be shared."""
    s = scheme(uri)
    if s == "memory":
        return "memory:// lives in one process"
    if s in ("", "file", "local") and not local_path(uri).expanduser().is_absolute():
        return "a relative path is a different directory on every node"
    return None


@dataclass(frozen=True)
class RunStorage:
    """The three places a run keeps state other processes read, each with the config key that set it."""

    registry: str
    replay: str
    train: str
    keys: dict[str, str]  # "registry" -> the key to change ("registry.uri" or "run.storage")

    @classmethod
    def resolve(cls, storage: str | None, registry_uri: str | None, replay_dir: str | None,
                run_dir: str | os.PathLike[str]) -> "RunStorage":
        """Explicit keys win, then run.storage/<part>, then <run dir>/<part> (as written: a relative
        run dir stays relative here, so `shared_storage_problems` can still see it)."""
        base, base_key = (storage, "run.storage") if storage else (str(run_dir), "run.storage (or run.run_dir)")
        registry = (registry_uri, "registry.uri") if registry_uri else (join(base, "registry"), base_key)
        replay = (replay_dir, "replay.dir") if replay_dir else (join(base, "replay"), base_key)
        train = (join(base, "train"), base_key)
        return cls(registry=registry[0], replay=replay[0], train=train[0],
                   keys={"registry": registry[1], "replay": replay[1], "train": train[1]})

    def absolute(self) -> "RunStorage":
        """Local paths made absolute (workers on this node do not share the driver's working directory)."""
        return RunStorage(absolute(self.registry), absolute(self.replay), absolute(self.train), dict(self.keys))

    def items(self) -> list[tuple[str, str]]:
        return [("registry", self.registry), ("replay", self.replay), ("train", self.train)]


def shared_storage_problems(storage: RunStorage) -> list[str]:
    """One line per config key whose places other nodes cannot see."""
    by_key: dict[str, list[tuple[str, str, str]]] = {}
    for what, uri in storage.items():
        reason = node_local_reason(uri)
        if reason:
            by_key.setdefault(storage.keys[what], []).append((what, uri, reason))
    out = []
    for key, places in by_key.items():
        whats = " and ".join(w for w, _, _ in places)
        uris = ", ".join(u for _, u, _ in places)
        reasons = "; ".join(dict.fromkeys(r for _, _, r in places))
        out.append(f"{key}: the {whats} ({uris}) would be node-local ({reasons}); set it to {SHARED_HINT}")
    return out


def open_fs(uri: str | os.PathLike[str]):
    """(filesystem, root path) for a local path or URL.  Remote listings are never cached:
    another process (a learner publishing, a restarted shard) changes what is there, and a
    cached listing would hide its new versions or segments."""
    import fsspec

    options = {"use_listings_cache": False} if is_url(uri) else {}
    return fsspec.core.url_to_fs(str(uri), **options)
