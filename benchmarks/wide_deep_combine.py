"""How wide_deep should combine its parts: the online learner on a simulated stream, no Ray.

The OnlineObjective learns from the loop's traffic rows in a shuffled order, 16 fresh rows per
step, as the live loop hands them: each row's prediction and its probability come from the model
being trained (prequential), `--p-label` of the rows carry the true label and the rest only a
reward (1 if the prediction was right).  The deep part starts from a random init of
`feedback.model` (the loop's start without a pretrained encoder).  Every `--eval-every` rows the
held-out accuracy on the first `--heldout` held-out rows is recorded.

    .venv/bin/python benchmarks/wide_deep_combine.py --json [--rows 2400] [--setups wide,wide_deep:sum,wide_deep:gate]
        [--heldout 1000] [--model wide_lr=0.1 --model wide_ngram_max=3]

`--rows` above the 15,608 traffic rows runs further passes, each in a fresh order, as a live
loop's traffic repeats.
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


def stream(kind: str, combine: str, rows: int, p_label: float, heldout: int, eval_every: int, seed: int,
           model: dict | None = None) -> dict:
    import torch

    from core.models.classifier_start import starting_classifier
    from core.config.feedback import FeedbackSection
    from core.data.labeled import load_labeled
    from learners.feedback_source import FeedbackBatch
    from learners.objective import WorkerContext
    from learners.online import OnlineObjective, OnlineSetup

    torch.set_num_threads(1)
    data = load_labeled(None, heldout_fraction=0.1, max_heldout=1000)
    rng = np.random.default_rng(seed)
    n = len(data.train)  # more rows than traffic: further passes, each in a fresh order (traffic repeats)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-rows // n))])[:rows]
    train = [data.train[i] for i in order]
    fb = FeedbackSection()
    fb = fb.model_copy(update={"model": fb.model.model_copy(update={"kind": kind, "combine": combine, **(model or {})})})
    start = starting_classifier(fb, data, seed=seed)
    obj = OnlineObjective()
    obj.setup(OnlineSetup(fb=fb, files=start.bundle.files(), weights={k: v.numpy() for k, v in start.bundle.weights().items()},
                          labels=data.labels, heldout=data.heldout[:heldout], seed=seed), WorkerContext())
    curve, started = [], time.perf_counter()
    for at in range(0, len(train), 16):
        part = train[at:at + 16]
        texts, truth = [t for t, _ in part], np.array([y for _, y in part])
        probs = obj.bundle.predict_proba(texts)
        pred = probs.argmax(1)
        labeled = rng.random(len(part)) < p_label
        obj.step(FeedbackBatch.from_rows(
            texts, pred, probs[np.arange(len(part)), pred],
            label=[int(y) if lab else None for y, lab in zip(truth, labeled)],
            reward=[None if lab else float(y == a) for y, a, lab in zip(truth, pred, labeled)]))
        seen = at + len(part)
        if seen % eval_every < 16 or seen == len(train):
            curve.append([seen, round(obj.evaluate()["heldout_accuracy"], 4)])
    wide = obj.bundle.wide
    return {"curve": curve, "final": curve[-1][1], "s": round(time.perf_counter() - started, 1),
            "mix": [round(x, 3) for x in wide.mix.tolist()] if wide is not None and wide.uses_deep and combine == "gate" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rows", type=int, default=2400)
    ap.add_argument("--setups", default="wide,wide_deep:sum,wide_deep:gate", help="kind[:combine], comma-separated")
    ap.add_argument("--p-label", type=float, default=0.7)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                    help="a feedback.model setting for every setup, e.g. wide_lr=0.1 or wide_ngram_max=3")
    args = ap.parse_args()
    model = {k: json.loads(v) for k, _, v in (m.partition("=") for m in args.model)}
    out = {"rows": args.rows, "p_label": args.p_label, "heldout": args.heldout, "model": model}
    for setup in args.setups.split(","):
        kind, _, combine = setup.partition(":")
        out[setup] = stream(kind, combine or "gate", args.rows, args.p_label, args.heldout, args.eval_every, args.seed,
                            model)
        print(setup, out[setup], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
