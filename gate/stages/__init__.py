"""The built-in stages; importing this package registers them (gate/stage.py `register_stage`).

    heldout   the paired test on the kind's fixed held-out set, the drift guard, the recent slice
    ope       the candidate's off-policy estimate on logged live decisions against live's
    shadow    beside live traffic: the candidate's answers to a share of requests, judged off-policy
    canary    on live traffic: a sticky share of clients answered by the candidate, a sequential test
    bounds    a generator's reward-hacking bounds: KL to a reference, repetition, length
    groups    per-group non-regression: no group seen so far lost beyond a tolerance (Holm / Bonferroni)
    rollback  the guard on live: live paired with the version before it on its labeled feedback,
              versions that cannot answer
"""

from gate.stages import bounds, canary, groups, heldout, ope, rollback, shadow  # noqa: F401
