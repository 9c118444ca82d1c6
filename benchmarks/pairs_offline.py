"""The pair loop's learner offline: configs/pairs.yaml's online objective on a simulated stream, no Ray.

What `evolve run configs/pairs.yaml` does to the learner, in one process: the traffic pairs arrive
in the traffic actors' shuffled order (cycling when they run out), `events / updates` of them per
update; each gets the current model's answer and, with probability `traffic.p_label`, its true label
(else a reward: 1 when the answer was right).  Joined rows go to a replay table: `uniform` (the
preset's) hands the learner `fresh` rows drawn from every row so far, `fifo` each row once; the
objective adds its own rehearsal rows (learners/online.py) as live.  The deep part starts from a
random init of the preset's encoder (a fresh clone has no pretrained encoder).  Every `--eval-every`
updates the model is scored on the gate's held-out pairs (the rows `benchmarks/pairs_baseline.py`
scores on): the served logits, and the wide and deep parts' own logits.  `online_first_sight` is the
prequential accuracy on inputs at their first sight.

    .venv/bin/python benchmarks/pairs_offline.py [--events 21500] [--updates 2460] [--replay uniform]
        [--set model.wide_lr=0.2 --set learning.rehearsal=0.25 ...] [--json]
    .venv/bin/python benchmarks/pairs_offline.py --ceiling [--set model.wide_buckets=1048576]

The defaults are one measured 900 s live run's counts (feedback events, learner updates).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def configured(path: str, settings: list[str]):
    """The config's first feedback loop with `section.key=value` settings (values read as JSON)."""
    from core.config.loader import load_config

    (fb, *_) = load_config(path).loops_of("feedback").values()
    by_section: dict[str, dict] = {}
    for item in settings:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        by_section.setdefault(section, {})[name] = parsed
    model = by_section.setdefault("model", {})
    if "encoder_registry" not in model and "pretrained_dir" not in model:
        model["encoder_registry"] = None  # a fresh clone's start: no pretrained encoder
    return fb.model_copy(update={s: getattr(fb, s).model_copy(update=v) for s, v in by_section.items()})


def scores(bundle, heldout) -> dict[str, float]:
    """Held-out accuracy of the served logits and of each part's own logits."""
    import torch

    texts, truth = [t for t, _ in heldout], np.array([y for _, y in heldout])
    out = {"heldout": float((bundle.predict_proba(texts).argmax(1) == truth).mean())}
    if bundle.wide is not None and bundle.wide.uses_deep:
        bundle.model.eval()
        with torch.no_grad():
            wide = np.concatenate([bundle.wide(texts[i:i + 128]).numpy() for i in range(0, len(texts), 128)])
            deep = np.concatenate([bundle.model(*bundle.encode(texts[i:i + 128])).numpy()
                                   for i in range(0, len(texts), 128)])
        out["wide_part"] = float((wide.argmax(1) == truth).mean())
        out["deep_part"] = float((deep.argmax(1) == truth).mean())
    return {k: round(v, 4) for k, v in out.items()}


def simulate(fb, data, events: int, updates: int, replay: str, eval_every: int, seed: int) -> dict:
    import torch

    from core.data.labeled import ordered_index
    from core.models.classifier_start import starting_classifier
    from learners.feedback_source import FeedbackBatch
    from learners.objective import WorkerContext
    from learners.online import OnlineObjective, OnlineSetup, split_batch

    torch.manual_seed(seed)
    start = starting_classifier(fb, data, seed=seed)
    obj = OnlineObjective()
    obj.setup(OnlineSetup(fb=fb, files=start.bundle.files(), labels=data.labels, seed=seed,
                          weights={k: v.numpy() for k, v in start.bundle.weights().items()}), WorkerContext())
    rng = np.random.default_rng(seed)
    order = ordered_index(data, "shuffled", seed)
    fresh_n, _ = split_batch(fb.learning.batch_size, fb.learning.rehearsal)
    table: list[tuple] = []  # joined rows: (input, prediction, logged p, label or None, reward or None)
    seen: set = set()
    first_right = first_n = taken = handed = 0
    curve, started = [], time.perf_counter()
    for u in range(updates):
        due = round((u + 1) * events / updates) - taken
        if due > 0:
            rows = [data.train[order[(taken + i) % len(order)]] for i in range(due)]
            taken += due
            probs = obj.bundle.predict_proba([t for t, _ in rows])
            for (text, truth), p in zip(rows, probs):
                pred = int(p.argmax())
                if text not in seen:
                    seen.add(text)
                    first_n, first_right = first_n + 1, first_right + (pred == truth)
                labeled = rng.random() < fb.traffic.p_label
                table.append((text, pred, float(p[pred]), truth if labeled else None,
                              None if labeled else float(pred == truth)))
        if replay == "uniform":
            pick = rng.integers(0, len(table), size=fresh_n)
        else:  # fifo: each row once, the learner idles when it has handed out every row
            pick = np.arange(handed, min(handed + fresh_n, len(table)))
            handed += len(pick)
            if not len(pick):
                continue
        part = [table[i] for i in pick]
        obj.step(FeedbackBatch.from_rows([r[0] for r in part], [r[1] for r in part], [r[2] for r in part],
                                         label=[r[3] for r in part], reward=[r[4] for r in part]))
        if (u + 1) % eval_every == 0 or u + 1 == updates:
            curve.append({"updates": u + 1, "events": taken, **scores(obj.bundle, data.heldout)})
            print(json.dumps(curve[-1]), flush=True)
    return {"curve": curve, "final": curve[-1], "online_first_sight": round(first_right / max(first_n, 1), 4),
            "first_sight_rows": first_n, "s": round(time.perf_counter() - started, 1),
            "mix": [round(x, 3) for x in obj.bundle.wide.mix.tolist()] if obj.bundle.wide is not None else None}


def ceiling(fb, data) -> dict:
    """The wide part's features with the baseline's learner: LogisticRegression(C=1) on every
    traffic pair's hashed n-gram values, to convergence (what online AdaGrad could reach at best)."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    from core.models.wide import new_wide

    wide = new_wide(fb.model, len(data.labels))

    def matrix(rows):
        ids, offsets, values = wide.features([t for t, _ in rows])
        ptr = np.append(offsets.numpy(), len(ids))
        return csr_matrix((values.numpy(), ids.numpy(), ptr), shape=(len(rows), wide.features.buckets))

    started = time.perf_counter()
    x, x_held = matrix(data.train), matrix(data.heldout)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, [y for _, y in data.train])
    acc = float((clf.predict(x_held) == np.array([y for _, y in data.heldout])).mean())
    return {"ceiling_heldout": round(acc, 4), "s": round(time.perf_counter() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/pairs.yaml")
    ap.add_argument("--events", type=int, default=21500, help="feedback events over the run")
    ap.add_argument("--updates", type=int, default=2460, help="learner updates over the run")
    ap.add_argument("--replay", choices=("uniform", "fifo"), default="uniform")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting of the loop, e.g. model.wide_lr=0.2 or learning.rehearsal=0.25")
    ap.add_argument("--ceiling", action="store_true",
                    help="no stream: logistic regression on the wide part's features of every traffic pair")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    fb = configured(args.config, args.set)
    data = fb.data.load()
    out = {"settings": args.set, "heldout_pairs": len(data.heldout), "train_pairs": len(data.train)}
    if args.ceiling:
        out.update(ceiling(fb, data))
        print(out, flush=True)
    else:
        out.update({"replay": args.replay, "events": args.events, "updates": args.updates,
                    **simulate(fb, data, args.events, args.updates, args.replay, args.eval_every, args.seed)})
        print("final", out["final"], "online_first_sight", out["online_first_sight"], "s", out["s"], flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
