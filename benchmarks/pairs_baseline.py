"""Offline anchors for configs/pairs.yaml: scikit-learn on every traffic pair, scored on the gate's held-out pairs.

    concat  TfidfVectorizer(analyzer='char', ngram_range=(1, 2)) on "a [SEP] b" + LogisticRegression(C=1)
    sides   the same vectorizer on a, on b, and on the character n-grams a and b share, stacked
            (what the wide part of the live model sees, core/models/wide.py) + LogisticRegression(C=1)

Both train on all of `data.train` (the rows the traffic actors stream) with their true labels and
are scored on `data.heldout` (the rows the gate scores on), as loaded from the config's data section.

    .venv/bin/python benchmarks/pairs_baseline.py [--config configs/pairs.yaml] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shared_ngrams(a: str, b: str) -> str:
    """The characters and character bigrams of b that also occur in a, space-separated."""
    grams_a = set(a) | {a[i:i + 2] for i in range(len(a) - 1)}
    grams_b = list(b) + [b[i:i + 2] for i in range(len(b) - 1)]
    return " ".join(g for g in grams_b if g in grams_a)


def fit_score(name: str, train, heldout) -> dict:
    import numpy as np
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    y_train, y_held = [y for _, y in train], np.array([y for _, y in heldout])
    started = time.perf_counter()
    if name == "concat":
        vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2))
        x = vec.fit_transform([f"{a} [SEP] {b}" for (a, b), _ in train])
        x_held = vec.transform([f"{a} [SEP] {b}" for (a, b), _ in heldout])
    else:
        side_a, side_b = TfidfVectorizer(analyzer="char", ngram_range=(1, 2)), TfidfVectorizer(analyzer="char", ngram_range=(1, 2))
        shared = TfidfVectorizer(analyzer=str.split)
        x = hstack([side_a.fit_transform([a for (a, _), _ in train]), side_b.fit_transform([b for (_, b), _ in train]),
                    shared.fit_transform([shared_ngrams(a, b) for (a, b), _ in train])]).tocsr()
        x_held = hstack([side_a.transform([a for (a, _), _ in heldout]), side_b.transform([b for (_, b), _ in heldout]),
                         shared.transform([shared_ngrams(a, b) for (a, b), _ in heldout])]).tocsr()
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y_train)
    return {"heldout_accuracy": round(float((clf.predict(x_held) == y_held).mean()), 4),
            "s": round(time.perf_counter() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/pairs.yaml")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = ap.parse_args()
    from core.config.loader import load_config

    (fb, *_) = load_config(args.config).loops_of("feedback").values()  # the config's first feedback loop
    data = fb.data.load()
    out = {"train_pairs": len(data.train), "heldout_pairs": len(data.heldout), "labels": data.labels,
           "chance": round(1 / len(data.labels), 4)}
    for name in ("concat", "sides"):
        out[name] = fit_score(name, data.train, data.heldout)
        print(name, out[name], flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
