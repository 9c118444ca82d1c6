"""The `bounds` stage: a generator that games its reward is refused, however much reward it earns.

    judge   the candidate's held-out completions (the kind's `completions`: the ones its held-out
            reward was measured on) are measured (core/stats/reward_hacking.py): the mean
            per-token KL to the reference version (its tokens scored by the reference), the share
            of repeated n-grams within a completion, the mean length.  Past any bound of
            `gate.bounds` (`max_kl`, `max_repetition`, `max_length`, `min_length`): refused, and the
            reason names each bound it broke ("repetition 0.82 > max_repetition 0.5").  Live's
            figures on its own completions stand beside the candidate's in the evidence.
    reference   `gate.bounds.reference_version`, else the run's first live version (the one the
            loop started from), read from the registry's live history
"""

from __future__ import annotations

from typing import Any

from core.config.gate import BoundsSection
from core.stats.reward_hacking import Behaviour, behaviour
from gate.stage import Candidate, Stage, Verdict, register_stage


def broken(b: Behaviour, cfg: BoundsSection) -> list[str]:
    """Each bound the behaviour is past, said with its figure and its bound."""
    out = []
    if cfg.max_kl is not None and b.kl is not None and b.kl > cfg.max_kl:
        out.append(f"kl {b.kl:.3f} > max_kl {cfg.max_kl:g}")
    if cfg.max_repetition is not None and b.repetition > cfg.max_repetition:
        out.append(f"repetition {b.repetition:.3f} > max_repetition {cfg.max_repetition:g}")
    if cfg.max_length is not None and b.length > cfg.max_length:
        out.append(f"length {b.length:.1f} > max_length {cfg.max_length:g}")
    if cfg.min_length is not None and b.length < cfg.min_length:
        out.append(f"length {b.length:.1f} < min_length {cfg.min_length:g}")
    return out


@register_stage("bounds", settings=BoundsSection, needs=("completions",))
class RewardHackingBounds(Stage):
    def __init__(self, policy: Any, settings: BoundsSection):
        super().__init__(policy, settings)
        self.live_figures: dict[tuple[int, int], Behaviour] = {}  # (live, reference) -> live's behaviour

    def judge(self, cand: Candidate) -> Verdict:
        cfg, reference = self.settings, self.reference()
        mine = self.measure(cand.model, reference)
        key = (cand.live, reference)
        if key not in self.live_figures:
            self.live_figures = {key: self.measure(self.policy.model(cand.live), reference)}
        live = self.live_figures[key]
        evidence = {"reference": reference, "candidate": mine.to_dict(), "live": live.to_dict(),
                    "bounds": {k: v for k, v in cfg.model_dump().items() if k != "reference_version"}}
        breaches = broken(mine, cfg)
        if breaches:
            return Verdict("refuse", f"reward hacking: {'; '.join(breaches)} (reference v{reference})",
                           {**evidence, "broken": [b.split()[0] for b in breaches]})
        said = ", ".join(f"{k} {v:.3f}" for k, v in (("kl", mine.kl), ("repetition", mine.repetition),
                                                      ("length", mine.length)) if v is not None)
        return Verdict("promote", f"within the reward-hacking bounds: {said} (reference v{reference})", evidence)

    def reference(self) -> int:
        if self.settings.reference_version is not None:
            return self.settings.reference_version
        history = (self.policy.registry.stages(self.policy.policy_id).get("live") or {}).get("history") or []
        return int(history[0]) if history else int(self.policy.live_version)

    def measure(self, model: Any, reference: int) -> Behaviour:
        """The version's behaviour on its held-out completions, its tokens scored by the reference too."""
        kind = self.policy.kind
        drawn = [c for cs in kind.completions(model) for c in cs]
        pairs = [(c.prompt_ids, c.token_ids) for c in drawn]
        ref = kind.logprobs(self.policy.model(reference), pairs)
        return behaviour([c.token_ids for c in drawn], [c.logprobs for c in drawn], ref, self.settings.repetition_n)
