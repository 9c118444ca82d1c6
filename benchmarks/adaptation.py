"""The adaptive layer on changing streams, with the controller on and off.

    text:   `evolve run configs/drift_text.yaml` (hotel -> book -> laptop, `--group-rows` rows each)
            twice, adapt on / off, same seed  -> recovery_events_on / _off, bwt_on / _off,
            detection_delay_events (median over the changes, on)
    calm:   the same preset on the shuffled stream, adapt on -> false_alarms_per_10k (acted-on alarms
            per 10,000 feedback events; every alarm is listed under `alarms_calm`)
    rl:     `evolve run configs/drift_cartpole.yaml` twice, adapt on / off (benchmarks/_adapt_rl.py)
            -> recovery_env_steps_on / _off
    novelty: an autoencoder on the pretrained encoder's [CLS] features of reviews, scored on
            held-out reviews against People's Daily sentences -> novelty_auroc
            (and on the token-mean features, the other `novelty.pooling` -> novelty_auroc_mean)

Recovery after a change to group g: feedback events from the change until the live version's
accuracy on g's held-out rows is first within 0.02 of its level when the stream left g (or the
run ended).  The live version's group accuracy comes from the gate's decisions in events.jsonl.

    .venv/bin/python benchmarks/adaptation.py --json [--group-rows N] [--text-budget-s S] [--skip-rl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evolve_run(config: str, run_dir: Path, budget_s: float, overrides: list[str], reuse: bool = False) -> dict:
    if reuse and (run_dir / "summary.json").exists():
        return _read_run(run_dir, None)
    cmd = [sys.executable, "-m", "cluster.cli", "run", config, "--budget-s", str(budget_s), "--run-dir", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**__import__("os").environ, "RAY_AUTH_MODE": "disabled"}
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget_s + 600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return _read_run(run_dir, round(time.time() - started, 1))


def _read_run(run_dir: Path, wall_s: float | None) -> dict:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"events": events, "summary": summary, "wall_s": wall_s}


def feedback_clock(events: list[dict]) -> tuple[list[float], list[float]]:
    """(times, feedback events joined by then) from the loop's progress lines: the one clock that
    group changes, alarms and gate decisions share (a decision's own `events` counts its data window)."""
    points = [(e["time"], e["feedback"]) for e in events
              if e.get("event") == "progress" and e.get("loop") == "sentiment" and "feedback" in e]
    return [t for t, _ in points], [float(f) for _, f in points]


def live_group_accuracy(events: list[dict]) -> list[tuple[int, dict[str, float]]]:
    """(feedback events, live's accuracy per group) after each change of the live version."""
    import numpy as np

    times, counts = feedback_clock(events)
    by_version: dict[int, dict[str, float]] = {}
    timeline = []
    for e in events:
        at = int(np.interp(e["time"], times, counts)) if times else 0
        if e.get("event") == "gate_decision" and e.get("group_accuracy"):
            by_version[e["version"]] = e["group_accuracy"]
            if e.get("decision") in ("initial", "promote"):
                timeline.append((at, e["group_accuracy"]))
        elif e.get("event") == "rollback" and e.get("to") in by_version:
            timeline.append((at, by_version[e["to"]]))
    return timeline


def recoveries(events: list[dict], total_events: int) -> list[dict]:
    changes = [(e["feedback_events"], e["group"]) for e in events if e.get("event") == "group_change"
               and e.get("left") is not None]
    timeline = live_group_accuracy(events)
    out = []
    for k, (at, group) in enumerate(changes):
        until = changes[k + 1][0] if k + 1 < len(changes) else total_events
        inside = [(ev, acc[group]) for ev, acc in timeline if at <= ev <= until and group in acc]
        before = [acc[group] for ev, acc in timeline if ev < at and group in acc]
        if not inside:
            out.append({"group": group, "at": at, "recovery_events": None, "reason": "no new live version"})
            continue
        final = inside[-1][1]
        start = before[-1] if before else None
        if start is not None and start >= final - 0.02:
            first = at  # live was already within 0.02 of the level the segment ended at
        else:
            first = next(ev for ev, a in inside if a >= final - 0.02)
        out.append({"group": group, "at": at, "start_accuracy": start, "final_accuracy": round(final, 4),
                    "versions": len(inside), "recovery_events": first - at})
    return out


def detection_delays(events: list[dict]) -> list[int]:
    changes = [e["feedback_events"] for e in events if e.get("event") == "group_change" and e.get("left")]
    alarms = sorted(e["events"] for e in events if e.get("event") == "adapt")
    delays = []
    for k, at in enumerate(changes):
        until = changes[k + 1] if k + 1 < len(changes) else float("inf")
        hit = [a for a in alarms if at <= a < until]
        if hit:
            delays.append(hit[0] - at)
    return delays


def text_runs(args, work: Path) -> dict:
    common = [f"loops.sentiment.data.group_rows={args.group_rows}", f"run.seed={args.seed}"]
    on = evolve_run("configs/drift_text.yaml", work / "text_on", args.text_budget_s, common, args.reuse)
    off = evolve_run("configs/drift_text.yaml", work / "text_off", args.text_budget_s,
                     common + ["loops.sentiment.adapt.enabled=false"], args.reuse)
    out = {}
    for name, run in (("on", on), ("off", off)):
        loop = run["summary"]["loops"]["sentiment"]
        rec = recoveries(run["events"], loop["feedback_events"])
        values = [r["recovery_events"] for r in rec if r["recovery_events"] is not None]
        out[f"recovery_events_{name}"] = statistics.median(values) if values else None
        out[f"recoveries_{name}"] = rec
        out[f"bwt_{name}"] = loop.get("continual", {}).get("BWT")
        out[f"acc_{name}"] = loop.get("continual", {}).get("ACC")
        out[f"rollbacks_{name}"] = len(loop.get("rollbacks", []))
        out[f"feedback_events_{name}"] = loop["feedback_events"]
    delays = detection_delays(on["events"])
    out["detection_delay_events"] = statistics.median(delays) if delays else None
    out["detection_delays"] = delays
    return out


def calm_run(args, work: Path) -> dict:
    run = evolve_run("configs/drift_text.yaml", work / "calm", args.calm_budget_s,
                     [f"run.seed={args.seed}", "loops.sentiment.data.order=shuffled"], args.reuse)
    loop = run["summary"]["loops"]["sentiment"]
    alarms = [{k: e.get(k) for k in ("events", "signal", "detector", "before", "after", "suppressed")}
              for e in run["events"] if e.get("event") == "adapt"]
    acted = [a for a in alarms if not a["suppressed"]]
    n = max(loop["feedback_events"], 1)
    return {"false_alarms_per_10k": round(len(acted) * 10_000 / n, 2),
            "all_alarms_per_10k": round(len(alarms) * 10_000 / n, 2),
            "calm_feedback_events": loop["feedback_events"], "alarms_calm": alarms}


def novelty_auroc(args, pooling: str = "cls") -> dict:
    import numpy as np

    from core.models.classifier_start import starting_classifier
    from core.config.loader import load_config
    from core.models.novelty import auroc
    from core.config.novelty import NoveltySection
    from core.data.corpus import people_daily_texts
    from learners.autoencoder import AutoencoderObjective, AutoencoderSetup
    from learners.objective import WorkerContext

    cfg = load_config(ROOT / "configs/drift_text.yaml")
    fb = cfg.loops["sentiment"]
    data = fb.data.load()
    start = starting_classifier(fb, data, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    train = [t for t, _ in data.train]
    rng.shuffle(train)
    objective = AutoencoderObjective()
    objective.setup(AutoencoderSetup(cfg=NoveltySection(watch="sentiment", pooling=pooling), registry_uri=None,
                                     reference={"policy_id": "-", "version": 0}, weights=start.bundle.weights(),
                                     files=start.bundle.files()), WorkerContext())
    feats = objective.features(train[: args.novelty_texts])
    for epoch in range(args.novelty_epochs):
        for i in rng.permutation(len(feats) // 64):
            objective.train_on(feats[i * 64:(i + 1) * 64])
    heldout = [t for t, _ in data.heldout]
    news = [t for t in people_daily_texts() if len(t) >= 4]
    news = [news[i] for i in rng.choice(len(news), size=len(heldout), replace=False)]
    scorer = objective.model
    import torch

    with torch.no_grad():
        neg = scorer.errors(torch.from_numpy(objective.features(heldout))).numpy()
        pos = scorer.errors(torch.from_numpy(objective.features(news))).numpy()
    return {"novelty_auroc": round(auroc(neg, pos), 4), "novelty_encoder": start.origin,
            "novelty_train_texts": len(feats), "novelty_heldout": len(neg), "novelty_news": len(pos)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group-rows", type=int, default=2500, help="rows of each domain in the drift stream")
    ap.add_argument("--text-budget-s", type=float, default=480)
    ap.add_argument("--calm-budget-s", type=float, default=300)
    ap.add_argument("--rl-budget-s", type=float, default=900)
    ap.add_argument("--novelty-texts", type=int, default=4000)
    ap.add_argument("--novelty-epochs", type=int, default=20)
    ap.add_argument("--skip-rl", action="store_true")
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="read the text runs already in --work-dir, run the rest")
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="evolve-adapt-"))
    started = time.time()
    out: dict = {"work_dir": str(work)}
    out.update(novelty_auroc(args))
    out["novelty_auroc_mean"] = novelty_auroc(args, "mean")["novelty_auroc"]
    if not args.skip_text:
        out.update(text_runs(args, work))
        out.update(calm_run(args, work))
    if not args.skip_rl:
        from benchmarks._adapt_rl import cartpole_drift, figures

        for name, adapt in (("on", True), ("off", False)):
            done = work / f"rl_{name}" / "run"
            if args.reuse and (done / "summary.json").exists():
                rl = figures(done, args.seed, None)
            else:
                rl = cartpole_drift(adapt=adapt, seed=args.seed, budget_s=args.rl_budget_s, workdir=work / f"rl_{name}")
            out[f"recovery_env_steps_{name}"] = rl.get("recovery_env_steps")
            out[f"rl_{name}"] = rl
    out["wall_s"] = round(time.time() - started, 1)
    targets = {
        "recovery_events_on <= 0.5 x off": _le(out.get("recovery_events_on"), out.get("recovery_events_off"), 0.5),
        "bwt_on >= -0.02 and >= bwt_off": (None if out.get("bwt_on") is None else
                                           out["bwt_on"] >= -0.02 and out["bwt_on"] >= (out.get("bwt_off") or -1)),
        "false_alarms_per_10k <= 1": None if "false_alarms_per_10k" not in out else out["false_alarms_per_10k"] <= 1,
        "detection_delay_events <= 500": (None if out.get("detection_delay_events") is None
                                          else out["detection_delay_events"] <= 500),
        "recovery_env_steps_on <= 0.5 x off": _le(out.get("recovery_env_steps_on"), out.get("recovery_env_steps_off"),
                                                  0.5),
        "novelty_auroc >= 0.9": out["novelty_auroc"] >= 0.9,
    }
    out["targets"] = targets
    if not args.json:
        for k, v in targets.items():
            print(f"{k:40s} {v}")
    print(json.dumps(out, default=str))


def _le(a, b, factor: float):
    return None if a is None or b is None else a <= factor * b


if __name__ == "__main__":
    main()
