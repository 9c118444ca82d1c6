"""The generator's fixed judge: how positive a text reads, by a classifier trained once on the reviews' labels.

    judge = ensure_judge()                   # loads the judge's file, else trains it and writes it
    judge.positive(["质量很好，很满意"])      # -> [P(pos)]
    judge.reward(prompts, completions)       # P(pos) of each prompt + completion: the loop's reward

The judge is hashed character n-grams (core/models/wide.py's hash, whitespace removed: a
tokenizer's decoded Chinese has spaces between characters), sublinear term frequency times inverse
document frequency, L2-normalised, and an L2-regularised logistic regression fitted by Newton-CG
(scipy).  It is trained on the judge's half of the reviews (core/data/prompts.py) and nothing the
generator's loop trains ever changes it; its accuracy on the other half, which it never saw, is
measured when it is made and kept in its file.

Its file is one `.npz` (no pickles): the idf and coefficient vectors, the intercept, a JSON
`meta` (format, features, training figures, a fingerprint of the training reviews) and a SHA-256
of all of them.  A file that cannot be read, fails its checksum or was made by another judge
format or from other reviews is refused (`JudgeFileError`, naming the file and why);
`ensure_judge` then trains a new one and replaces it (written under a temporary name and renamed,
so a reader never sees half a file and concurrent makers write the same judge).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import optimize, sparse

from core.data.pairs_cache import cache_dir
from core.data.prompts import compact, judge_reviews
from core.models.wide import hash_ngrams

log = logging.getLogger(__name__)

JUDGE_FORMAT = 1
FEATURES = {"buckets": 2**18, "ngram_min": 1, "ngram_max": 3}
L2 = 0.1  # the penalty on the coefficients against the log loss summed over the reviews (scikit-learn's 1 / C)
_ARRAYS = ("idf", "coef", "intercept")


class JudgeFileError(ValueError):
    """A judge file that is unreadable, corrupt, or not this judge's."""


def default_judge_path() -> Path:
    return cache_dir() / "judge" / f"reviews-judge-v{JUDGE_FORMAT}.npz"


@dataclass(frozen=True)
class Judge:
    idf: np.ndarray  # float32 [buckets]
    coef: np.ndarray  # float32 [buckets]
    intercept: float
    meta: dict[str, Any]

    def positive(self, texts: Sequence[str]) -> np.ndarray:
        """float64 [len(texts)]: the probability that each text reads as positive."""
        if not len(texts):
            return np.zeros(0)
        z = _features(texts, self.idf) @ self.coef.astype(np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def reward(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """The loop's reward: how positive each prompt, continued by its completion, reads."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return self.positive([p + c for p, c in zip(prompts, completions)])

    def accuracy(self, rows: Sequence[tuple[str, int]]) -> float:
        """The share of (text, label) rows whose label the judge reads (threshold 0.5)."""
        p = self.positive([t for t, _ in rows])
        return float(np.mean((p >= 0.5) == np.array([y for _, y in rows], bool)))


def train_judge() -> Judge:
    """Fit the judge on its half of the reviews; its accuracy on the other half goes into `meta`."""
    trained, unseen = judge_reviews()
    texts, y = [t for t, _ in trained], np.array([label for _, label in trained], np.float64)
    idf = _idf(texts)
    x = _features(texts, idf)
    coef, intercept = _logistic(x, y, L2)
    judge = Judge(idf, coef.astype(np.float32), float(intercept), {})
    meta = {"format": JUDGE_FORMAT, "features": FEATURES, "l2": L2, "fingerprint": _fingerprint(trained),
            "trained_on": len(trained), "train_accuracy": judge.accuracy(trained),
            "unseen_reviews": len(unseen), "unseen_accuracy": judge.accuracy(unseen)}
    return Judge(judge.idf, judge.coef, judge.intercept, meta)


def save_judge(judge: Judge, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(judge)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays, checksum=np.array(_checksum(arrays)))
    os.replace(tmp, path)
    return path


def load_judge(path: str | Path, *, expect_fingerprint: str | None = None) -> Judge:
    """The judge in `path`; JudgeFileError when it cannot be read, fails its checksum or is another judge's."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in (*_ARRAYS, "meta")}
            stored = str(z["checksum"])
        meta = json.loads(str(arrays["meta"]))
    except FileNotFoundError:
        raise
    except Exception as exc:  # a truncated zip, a missing entry, bad JSON: one refusal, whatever the cause
        raise JudgeFileError(f"{path}: not a readable judge file ({type(exc).__name__}: {exc})") from exc
    if _checksum(arrays) != stored:
        raise JudgeFileError(f"{path}: checksum mismatch, the file is corrupt")
    if meta.get("format") != JUDGE_FORMAT or meta.get("features") != FEATURES or meta.get("l2") != L2:
        raise JudgeFileError(f"{path}: made by another judge (format {meta.get('format')}, this is {JUDGE_FORMAT})")
    if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
        raise JudgeFileError(f"{path}: trained on other reviews than the ones installed here")
    return Judge(arrays["idf"], arrays["coef"], float(arrays["intercept"][0]), meta)


def ensure_judge(path: str | Path | None = None) -> Judge:
    """The judge from `path` (default: the cache's), trained and written there when missing or refused."""
    path = Path(path) if path is not None else default_judge_path()
    trained, _ = judge_reviews()
    try:
        return load_judge(path, expect_fingerprint=_fingerprint(trained))
    except FileNotFoundError:
        log.info("training the judge (first use): %s", path)
    except JudgeFileError as exc:
        log.warning("%s; training it again", exc)
    judge = train_judge()
    save_judge(judge, path)
    log.info("judge written to %s: accuracy %.3f on %d reviews it never saw", path,
             judge.meta["unseen_accuracy"], judge.meta["unseen_reviews"])
    return judge


# ---- features and fit ----------------------------------------------------------------------------
def _bags(texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for text in texts:
        b = hash_ngrams(compact(text), FEATURES["buckets"], FEATURES["ngram_min"], FEATURES["ngram_max"])
        out.append(np.unique(b, return_counts=True))
    return out


def _idf(texts: Sequence[str]) -> np.ndarray:
    df = np.zeros(FEATURES["buckets"], np.float64)
    for ids, _ in _bags(texts):
        df[ids] += 1
    return (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)  # smoothed: an unseen bucket counts


def _features(texts: Sequence[str], idf: np.ndarray) -> sparse.csr_matrix:
    """[len(texts), buckets]: (1 + log count) * idf, each row L2-normalised."""
    bags = _bags(texts)
    indptr = np.cumsum([0] + [len(ids) for ids, _ in bags])
    ids = np.concatenate([ids for ids, _ in bags]) if bags else np.zeros(0, np.int64)
    counts = np.concatenate([c for _, c in bags]).astype(np.float64) if bags else np.zeros(0)
    values = (1 + np.log(counts)) * idf[ids]
    for i in range(len(bags)):
        row = values[indptr[i]:indptr[i + 1]]
        norm = np.sqrt((row * row).sum())
        if norm > 0:
            row /= norm
    return sparse.csr_matrix((values, ids, indptr), shape=(len(bags), FEATURES["buckets"]))


def _logistic(x: sparse.csr_matrix, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Coefficients and intercept minimising the summed log loss + l2 / 2 * |coef|^2 (intercept free).

    Newton-CG on Hessian-vector products (scikit-learn's newton-cg): a few Newton steps, each a
    handful of sparse products, where L-BFGS-B's bookkeeping over every coefficient costs more than
    the products.  Only the buckets some training text has are fitted (the penalty leaves the
    others at 0)."""
    used = np.unique(x.indices)
    xu, sign = x[:, used].tocsr(), 2 * y - 1
    xt = xu.T.tocsr()

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (xu @ w[:-1] + w[-1])
        value = np.logaddexp(0, -margin).sum() + 0.5 * l2 * w[:-1] @ w[:-1]
        g = -sign * np.exp(-np.logaddexp(0, margin))  # d loss / d z = -sign * sigmoid(-margin)
        return value, np.append(xt @ g + l2 * w[:-1], g.sum())

    def hessp(w: np.ndarray, v: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(xu @ w[:-1] + w[-1])))
        u = p * (1 - p) * (xu @ v[:-1] + v[-1])
        return np.append(xt @ u + l2 * v[:-1], u.sum())

    fit = optimize.minimize(loss, np.zeros(len(used) + 1), jac=True, hessp=hessp, method="Newton-CG",
                            options={"xtol": 1e-4, "maxiter": 100})
    coef = np.zeros(x.shape[1])
    coef[used] = fit.x[:-1]
    return coef, float(fit.x[-1])


def _arrays(judge: Judge) -> dict[str, np.ndarray]:
    return {"idf": judge.idf.astype(np.float32), "coef": judge.coef.astype(np.float32),
            "intercept": np.array([judge.intercept], np.float64),
            "meta": np.array(json.dumps(judge.meta, sort_keys=True))}


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in (*_ARRAYS, "meta"):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def _fingerprint(rows: Sequence[tuple[str, int]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for text, label in rows:
        h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()
