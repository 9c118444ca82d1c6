"""Evolve's decision policy against Vowpal Wabbit's `cb_explore_adf` on the same simulated streams.

Each stream (core/decisions/simulate.py) is a classification stream turned into decisions:
the same rows, in the same order, for each method and seed.  Per method:

    progressive reward   the mean reward of the actions served so far, after each 1,000 events
    drift recovery       on a stream that drifts: events after the change until the mean reward of
                         the last `--window` events is back to 95% of the best final level any
                         method reached (the same target for every method)
    OPE error            Evolve only: the policy frozen `--eval-events` before the end (a candidate),
                         its value estimated by doubly robust OPE on the decisions logged after that
                         by the policy that went on learning, against the reward the frozen policy
                         then earns serving the next `--eval-events` events itself
    decisions per second in-process for both (predict, sample, learn): Evolve's decision API over
                         Serve is not built yet, so its figure is the policy's own, not the service's

    min_reward_ratio = min over streams of Evolve's (default exploration, squarecb) final
                       progressive reward over the best VW method's, each the mean over seeds

    .venv/bin/python benchmarks/decisions_vs_vw.py --json      (the last line is one JSON object)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config.decisions import DecisionExploreSection, DecisionModelSection  # noqa: E402
from core.decisions.explore import choose  # noqa: E402
from core.decisions.policy import DecisionPolicy  # noqa: E402
from core.decisions.simulate import INTERACTIONS, STREAMS, drift_at, rounds, uniform_reward  # noqa: E402
from core.stats import ope  # noqa: E402

EVOLVE = {"evolve_squarecb": "squarecb", "evolve_epsilon": "epsilon"}
VW = {"vw_squarecb": "--squarecb", "vw_epsilon": "--epsilon 0.05"}
DEFAULT = "evolve_squarecb"


def vw_lines(r, chosen=None, cost=0.0, prob=1.0) -> list[str]:
    shared = "shared |x " + " ".join(f"{k}:{v:.6g}" for k, v in r.context["x"].items())
    return [shared] + [f"{f'0:{cost}:{prob} ' if i == chosen else ''}|a class={a['id']}"
                       for i, a in enumerate(r.actions)]


def run_vw(args: str, stream, rng) -> tuple[list[float], float]:
    import vowpalwabbit

    vw = vowpalwabbit.Workspace(f"--cb_explore_adf {args} -q xa --quiet --random_seed 0")
    rewards, t0 = [], time.perf_counter()
    for r in stream:
        pmf = np.asarray(vw.predict(vw_lines(r)), np.float64)
        pmf /= pmf.sum()
        k = choose(pmf, rng)
        rewards.append(r.reward(r.actions[k]["id"]))
        vw.learn(vw_lines(r, k, -rewards[-1], pmf[k]))  # VW minimises cost: the reward's negative
    rate = len(rewards) / (time.perf_counter() - t0)
    vw.finish()
    return rewards, rate


def run_evolve(kind: str, stream, rng, eval_events: int, events: int) -> tuple[list[float], float, dict]:
    pol = DecisionPolicy(DecisionModelSection(interactions=INTERACTIONS), DecisionExploreSection(kind=kind))
    rewards, logged, frozen, t0 = [], [], None, time.perf_counter()
    for i, r in zip(range(events), stream):
        if i == events - eval_events:
            frozen = copy.deepcopy(pol)  # a candidate: the rows logged from here on are new to it
        req = pol.request(r.context, r.actions)
        d = pol.decide(req, rng)
        rewards.append(r.reward(d.action))
        pol.learn(req, d.chosen, rewards[-1], d.propensity)
        if frozen is not None:
            logged.append((req, d.chosen, d.propensity, rewards[-1]))
    rate = len(rewards) / (time.perf_counter() - t0)
    return rewards, rate, _ope_check(frozen, logged, stream, rng)


def _ope_check(pol: DecisionPolicy, logged, stream, rng) -> dict:
    """A policy frozen before the run's last rows: its DR estimate on those rows (logged by the
    policy that went on learning, none of them trained on by this one) against the reward it
    then earns serving the stream's next rows itself."""
    target = np.array([pol.decide(req, rng).probabilities for req, *_ in logged])
    q = np.clip(np.array([pol.scorer.predict(req.encoded) for req, *_ in logged]), 0.0, 1.0)
    rows = ope.Logged.of([a for _, a, _, _ in logged], [p for *_, p, _ in logged], [r for *_, r in logged])
    est = ope.estimate(target, rows, "dr", reward_model=q, samples=200)
    earned = [r.reward(pol.decide(pol.request(r.context, r.actions), rng).action) for r in stream]
    return {"ope": est.value, "low": est.low, "high": est.high, "measured": float(np.mean(earned)), "n": len(earned)}


def progressive(rewards: list[float], every: int = 1000) -> list[float]:
    c = np.cumsum(rewards)
    return [round(float(c[i - 1] / i), 4) for i in range(every, len(rewards) + 1, every)]


def recovery(rewards: list[float], drift: int, target: float, window: int) -> int | None:
    trailing = np.convolve(rewards, np.ones(window) / window, mode="valid")  # [i] = mean of rewards[i:i+window]
    after = np.flatnonzero(trailing[drift:] >= target)
    return int(after[0] + window) if len(after) else None


def bench_stream(name: str, events: int, seeds: list[int], eval_events: int, window: int) -> dict:
    runs: dict[str, list] = {m: [] for m in [*EVOLVE, *VW]}
    drift = drift_at(name, events)  # the same change point for the run and its evaluation tail
    for seed in seeds:
        for method, kind in EVOLVE.items():
            stream = rounds(name, events + eval_events, seed, drift)
            runs[method].append(run_evolve(kind, stream, np.random.default_rng(seed), eval_events, events))
        for method, args in VW.items():
            runs[method].append(run_vw(args, rounds(name, events, seed, drift), np.random.default_rng(seed)))
    out = {"uniform_reward": uniform_reward(name), "methods": {}}
    for method, per_seed in runs.items():
        curves = np.mean([progressive(r[0]) for r in per_seed], axis=0)
        out["methods"][method] = {"progressive": [round(float(v), 4) for v in curves],
                                  "final": round(float(curves[-1]), 4),
                                  "decisions_per_s": round(statistics.median(r[1] for r in per_seed)),
                                  **({"ope": [r[2] for r in per_seed]} if method in EVOLVE else {})}
    if drift is not None:
        level = max(float(np.mean([np.mean(r[0][-window:]) for r in per_seed])) for per_seed in runs.values())
        out["drift_at"], out["recovery_target"] = drift, round(0.95 * level, 4)
        for method, per_seed in runs.items():
            got = [recovery(r[0], drift, 0.95 * level, window) for r in per_seed]
            out["methods"][method]["recovery_events"] = (None if None in got else round(float(np.mean(got))))
    return out


def _best_recovery(stream: dict, methods) -> int | None:
    got = [stream["methods"][m].get("recovery_events") for m in methods]
    return min((g for g in got if g is not None), default=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-events", type=int, default=3000)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()
    streams = {}
    for name in args.streams:
        streams[name] = bench_stream(name, args.events, list(range(args.seeds)), args.eval_events, args.window)
        m = streams[name]["methods"]
        print(f"{name}: " + ", ".join(f"{k} {v['final']:.3f}" for k, v in m.items())
              + f" (uniform {streams[name]['uniform_reward']:.3f})", flush=True)
    ratios = {n: s["methods"][DEFAULT]["final"] / max(s["methods"][v]["final"] for v in VW) for n, s in streams.items()}
    drifting = [s for s in streams.values() if "drift_at" in s]
    ope_errors = [abs(o["ope"] - o["measured"]) for s in streams.values() for o in s["methods"][DEFAULT]["ope"]]
    rates = {"decisions_per_s": min(s["methods"][DEFAULT]["decisions_per_s"] for s in streams.values()),
             "vw_decisions_per_s": min(max(s["methods"][v]["decisions_per_s"] for v in VW) for s in streams.values())}
    result = {
        "events": args.events, "seeds": args.seeds, "evolve_path": "in-process policy (no Serve route yet)",
        "reward_ratio_by_stream": {k: round(v, 4) for k, v in ratios.items()},
        "min_reward_ratio": round(min(ratios.values()), 4),
        "drift_recovery_events": drifting[0]["methods"][DEFAULT].get("recovery_events") if drifting else None,
        "vw_drift_recovery_events": _best_recovery(drifting[0], VW) if drifting else None,
        "max_ope_abs_error": round(max(ope_errors), 4),
        **rates, "decisions_ratio": round(rates["decisions_per_s"] / rates["vw_decisions_per_s"], 3),
        "streams": streams,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
