"""Policy kinds: what the gate's words mean for one kind of policy.

    load(weights, files)   a candidate (or a stored version) as a model that answers
    fault(model)           why it cannot answer at all (None: it can); refused before any stage
    heldout, groups        the fixed held-out examples (input, label; a generator's: prompts) and
                           each one's group, or None
    correct(model, ex)     [N] bool: each labeled example answered right (or [N] scores: a
                           generator's mean reward per prompt)
    answer(model, inputs)  [N] the greedy answer to each logged input
    read(item)             an evidence item (gate/evidence.py) -> Evidence, or None when it says nothing
    off_policy(...)        the candidate's and live's values on logged decisions (the `ope` stage);
    ope_keeps(v, live)     whether a decision logged under version v is evidence while `live` is live
    gives                  the evidence it produces, which a stage's `needs` must find
    spec, unit             what the publisher is told about a version; what one live unit is
    check(section)         (optional) a GateError for a gate section it cannot serve

    text_classifier   a held-out example is a labeled text; a logged decision a joined feedback
                      (served label, its propensity, the label or reward); a unit a feedback
    q_policy          no held-out set; a logged decision an `/act` episode; a unit an episode,
                      scored by its return on the gate's [0, 1] scale
    text_generator    a held-out example is a prompt, scored by the mean reward of the version's
                      completions of it (which it also gives the `bounds` stage: `completions`,
                      `logprobs`); a logged decision a rated completion with its sampling
                      log-probabilities; a unit a feedback
    decision_policy   no held-out set; a logged decision a rewarded decision held back (context,
                      actions, served action, propensity); a unit a decision's reward on [0, 1]
"""

from __future__ import annotations

from typing import Any

from gate.pointer import GateError


def kind_class(name: str) -> type:
    if name == "text_classifier":
        from gate.kinds.text import TextKind

        return TextKind
    if name == "q_policy":
        from gate.kinds.q_policy import QPolicyKind

        return QPolicyKind
    if name == "text_generator":
        from gate.kinds.generator import GeneratorKind

        return GeneratorKind
    if name == "decision_policy":
        from gate.kinds.decision import DecisionKind

        return DecisionKind
    raise GateError(f"no gate adapter for policy kind {name!r} "
                    "(known: text_classifier, q_policy, text_generator, decision_policy)")


def kind_for(name: str, **args: Any) -> Any:
    """The adapter of kind `name`, built from its arguments (names and dicts: they cross Ray)."""
    return kind_class(name).from_args(**args)
