"""Policy registry publish/load speed against plain torch.save / torch.load.

    .venv/bin/python benchmarks/registry_io.py --json

Ours does more per call (sha256 of every file, fsync + rename, metadata);
the ratio says what that safety costs on a policy-sized state dict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.storage.registry import PolicyRegistry  # noqa: E402


def state_dict(mb: float) -> dict[str, torch.Tensor]:
    n = int(mb * 2**20 / 4 / 8)
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(n, generator=g) for i in range(8)}


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=64.0, help="state dict size in MiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    weights = state_dict(args.mb)
    with tempfile.TemporaryDirectory() as tmp:
        reg = PolicyRegistry(Path(tmp) / "registry")
        versions = []
        ours_publish = timed(lambda: versions.append(reg.publish("bench", weights)), args.repeats)
        ours_load = timed(lambda: reg.load("bench", versions[-1]), args.repeats)
        path = Path(tmp) / "plain.pt"
        plain_save = timed(lambda: torch.save(weights, path), args.repeats)
        plain_load = timed(lambda: torch.load(path, weights_only=True), args.repeats)
    result = {
        "mb": args.mb,
        "ours_publish_s": round(ours_publish, 4),
        "ours_load_s": round(ours_load, 4),
        "plain_save_s": round(plain_save, 4),
        "plain_load_s": round(plain_load, 4),
        "publish_ratio": round(ours_publish / plain_save, 3),
        "load_ratio": round(ours_load / plain_load, 3),
    }
    for key, value in result.items():
        print(f"{key:>16}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
