"""Generate the gRPC stubs (evolve_pb2.py, evolve_pb2_grpc.py) from evolve.proto with grpcio-tools.

The generated files are not committed (.gitignore): `make install` runs
`python -m serving.proto.build`, and `ensure_stubs()` builds them on first use
when they are missing (a checkout that skipped the Makefile still serves gRPC).
Protoc runs with the repository root as include path, so the generated
`_grpc` module imports `serving.proto.evolve_pb2`, which every Ray worker
(the Serve proxy included) can import from the installed package.

    python -m serving.proto.build          # (re)generate; prints what changed
    python -m serving.proto.build --check  # exit 1 when the stubs are missing or stale
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # include path: generated imports read `serving.proto.…`
PROTO = HERE / "evolve.proto"
OUTPUTS = ("evolve_pb2.py", "evolve_pb2_grpc.py")


class StubError(RuntimeError):
    """protoc failed; str() holds its message."""


def generate() -> dict[str, bytes]:
    """Run protoc into a temporary directory; returns {file name: contents}."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                str(PROTO.relative_to(ROOT))]
        # protoc resolves the well-known types from grpc_tools' bundled include dir
        args.insert(1, f"-I{Path(protoc.__file__).parent / '_proto'}")
        if protoc.main(args) != 0:
            raise StubError(f"protoc failed on {PROTO}")
        out = Path(tmp) / PROTO.relative_to(ROOT).parent
        return {name: (out / name).read_bytes() for name in OUTPUTS}


def build() -> list[str]:
    """Write the stubs next to the .proto (write-then-rename); returns the names that changed."""
    changed = []
    for name, data in generate().items():
        path = HERE / name
        if path.exists() and path.read_bytes() == data:
            continue
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a concurrent importer never sees half a file
        changed.append(name)
    return changed


def stale() -> bool:
    return any(not (HERE / name).exists() for name in OUTPUTS) or generate() != {
        name: (HERE / name).read_bytes() for name in OUTPUTS
    }


def ensure_stubs() -> None:
    """Build the stubs if they are missing or older than evolve.proto (a pull that changed the
    service); a cheap no-op otherwise."""
    outputs = [HERE / name for name in OUTPUTS]
    if any(not p.exists() or p.stat().st_mtime < PROTO.stat().st_mtime for p in outputs):
        build()
        for p in outputs:  # unchanged content keeps its old mtime: mark it checked
            os.utime(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the stubs are missing or out of date")
    args = parser.parse_args(argv)
    if args.check:
        if stale():
            print(f"{HERE}: gRPC stubs missing or stale; run python -m serving.proto.build", file=sys.stderr)
            return 1
        return 0
    changed = build()
    print(f"generated {', '.join(changed)}" if changed else "gRPC stubs up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
