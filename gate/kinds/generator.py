"""The text generator's gate adapter: held-out prompts scored by the loop's reward, rated completions.

    held-out example   a prompt of the fixed held-out set.  Every version draws `gate.samples.n`
                       completions of each (the same seed for every version) through its
                       `GenerationEngine`; its score on the prompt is their mean reward under the
                       loop's `reward_fn(prompts, completions) -> rewards`.  Scores, not right /
                       wrong: the `heldout` stage's paired bootstrap compares them
    completions        those same completions, with each token's log-probability under the version:
                       what the `bounds` stage measures (KL to a reference, repetition, length)
    unit               a joined feedback on a served completion: its score under the loop's reward
                       rule (core/data/completion_rewards.py); a preference scores nothing alone
    logged decision    a rated completion the joiner held back (`slice: ope`): its tokens, their
                       log-probabilities under the distribution that drew them (temperature, top-p),
                       its score
    off-policy         each side's probability of the logged completion as it would serve it (the
                       logged temperature and top-p) over the logged one: one weight per completion,
                       cut at `gate.ope.max_weight`, IPS or SNIPS (core/stats/ope.py); rows of any
                       version count, since each carries what drew it
    fault              a weight that is not a finite number
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from core.data.completion_rewards import RewardRule
from core.config.gate import GateSection, OPESection, SamplesSection
from core.models.completion_logprobs import completion_logprobs
from core.models.generator import GREEDY, Completion, Sampling, TransformersEngine, causal_lm_from_files
from core.stats.ope import Estimate, compare_sequences
from gate.evidence import Evidence, unservable
from gate.pointer import GateError

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class Generator:
    """A loaded version: its engine, and its held-out completions once drawn (each stage reads them)."""

    def __init__(self, engine: TransformersEngine):
        self.engine = engine
        self.heldout: list[list[Completion]] | None = None


class GeneratorKind:
    name = "text_generator"
    unit = "feedback"
    logged_units = "held-back rated completions"
    gives = frozenset({"heldout", "completions", "score", "logged", "inputs"})
    groups = None

    def __init__(self, prompts: Sequence[str], reward_fn: RewardFn, samples: SamplesSection | None = None,
                 batch: int = 16, device: str = "cpu", rule: RewardRule | None = None):
        if not prompts:
            raise GateError("a generator's gate needs a non-empty set of held-out prompts")
        self.heldout, self.reward_fn = list(prompts), reward_fn
        self.rule = rule or RewardRule()  # a rated completion's score: the learner's reward rule
        self.samples, self.batch, self.device = samples or SamplesSection(), batch, device
        self.spec = {"kind": self.name}

    @classmethod
    def from_args(cls, prompts: Sequence[str], reward_fn: RewardFn, samples: dict | None = None,
                  batch: int = 16, device: str = "cpu", rule: dict | None = None) -> "GeneratorKind":
        return cls(prompts, reward_fn, SamplesSection.model_validate(samples or {}), batch, device,
                   RewardRule(**rule) if rule else None)

    def check(self, section: GateSection) -> None:
        """What of a gate section a generator cannot serve: said before the run starts."""
        if "heldout" in section.stages and section.test != "bootstrap":
            raise GateError("gate.test: a generator's held-out scores are mean rewards; use 'bootstrap' "
                            f"(not {section.test!r}, which compares right / wrong answers)")
        if "ope" in section.stages and section.ope.method == "dr":
            raise GateError("gate.ope.method: a generator's completions are estimated by 'ips' or 'snips' "
                            "(dr needs a reward model of completions)")

    # ---- models ---------------------------------------------------------------------------
    def load(self, weights: Mapping[str, Any], files: Mapping[str, bytes]) -> Generator:
        model, tokenizer = causal_lm_from_files({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}, files)
        return Generator(TransformersEngine(model, tokenizer, self.device))

    def fault(self, model: Generator) -> str | None:
        for name, tensor in model.engine.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"weight {name} is not finite"
        return None

    def completions(self, model: Generator) -> list[list[Completion]]:
        """Per held-out prompt, the version's `samples.n` completions (drawn once per loaded version)."""
        if model.heldout is None:
            model.heldout = self._sampled(model, self.heldout)
        return model.heldout

    def correct(self, model: Generator, prompts: Sequence[str]) -> np.ndarray:
        """[N] each prompt's mean reward over the version's completions of it."""
        drawn = self.completions(model) if list(prompts) == self.heldout else self._sampled(model, prompts)
        flat = [(p, c.text) for p, cs in zip(prompts, drawn) for c in cs]
        rewards = np.asarray(self.reward_fn([p for p, _ in flat], [t for _, t in flat]), dtype=np.float64)
        if rewards.shape != (len(flat),) or not np.isfinite(rewards).all():
            raise GateError(f"the reward function must give one finite reward per completion ({len(flat)})")
        return rewards.reshape(len(prompts), self.samples.n).mean(1)

    def answer(self, model: Generator, inputs: Sequence[str]) -> np.ndarray:
        """Each prompt's greedy completion."""
        drawn = self._draw(model, inputs, 1, max_new_tokens=self.samples.max_new_tokens, temperature=GREEDY)
        return np.asarray([cs[0].text for cs in drawn], dtype=object)

    def logprobs(self, model: Generator, completions: Sequence[tuple[Sequence[int], Sequence[int]]],
                 temperature: float = 1.0, top_p: float = 1.0) -> list[np.ndarray]:
        """Each (prompt ids, token ids)'s token log-probabilities under the version, as it would sample them."""
        return completion_logprobs(model.engine, completions, temperature, top_p, self.batch)

    def _sampled(self, model: Generator, prompts: Sequence[str]) -> list[list[Completion]]:
        s = self.samples
        return self._draw(model, prompts, s.n, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                          top_p=s.top_p)

    def _draw(self, model: Generator, prompts: Sequence[str], n: int, **sampling: Any) -> list[list[Completion]]:
        """Per prompt its n completions, `batch` completions a call, each call seeded from `samples.seed`."""
        out: list[list[Completion]] = []
        per_call = max(1, self.batch // n)
        for i, start in enumerate(range(0, len(prompts), per_call)):
            drawn = Sampling(n=n, seed=self.samples.seed + i, **sampling)
            out.extend(model.engine.generate(list(prompts[start:start + per_call]), drawn))
        return out

    # ---- evidence -------------------------------------------------------------------------
    def read(self, item: Mapping[str, Any]) -> Evidence | None:
        kind = item.get("type")
        if kind == "unservable":
            return unservable(item)
        if kind != "feedback":
            return None
        row = item["row"]
        version, score = row.get("policy_version"), self.rule.score(row)
        ev = Evidence(version=None if version is None else int(version), score=score, client=item.get("client"),
                      inputs=[str(row["prompt"])] if row.get("prompt") else None)
        if item.get("slice") == "ope" and score is not None:
            tokens, drawn = [int(t) for t in row["token_ids"]], [float(x) for x in row["sampling_logprobs"]]
            if len(tokens) != len(drawn):
                raise ValueError("a logged completion needs one sampling log-probability per token")
            ev.logged = ([int(t) for t in row["prompt_ids"]], tokens, float(np.sum(drawn)),
                         float(row["temperature"]), float(row["top_p"]), score)
        return ev

    def ope_keeps(self, version: int | None, live: int | None) -> bool:
        return True  # a logged completion carries what drew it: any version's are evidence

    def off_policy(self, candidate: Generator, live: Callable[[], Any], rows: Sequence[tuple], cfg: OPESection,
                   seed: int) -> tuple[Estimate, Estimate, Estimate, str]:
        drawn = np.asarray([r[2] for r in rows])
        rewards = np.asarray([r[5] for r in rows], dtype=np.float64)
        ratios_c = self._sequence_logprobs(candidate, rows) - drawn
        ratios_l = self._sequence_logprobs(live(), rows) - drawn
        c, l, d = compare_sequences(ratios_c, ratios_l, rewards, cfg.method, cfg.max_weight,
                                    cfg.bootstrap_samples, cfg.level, seed)
        said = (f"off-policy ({c.method}, {c.n} completions, ess {c.ess:.1f}): candidate {c.value:.3f} "
                f"[{c.low:.3f}, {c.high:.3f}], live {l.value:.3f}, diff {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        return c, l, d, said

    def _sequence_logprobs(self, model: Generator, rows: Sequence[tuple]) -> np.ndarray:
        """[N] log-probability of each logged completion under `model` with the row's sampling settings."""
        out = np.zeros(len(rows))
        by_sampling: dict[tuple[float, float], list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_sampling[(row[3], row[4])].append(i)
        for (temperature, top_p), idx in by_sampling.items():
            scored = self.logprobs(model, [(rows[i][0], rows[i][1]) for i in idx], temperature, top_p)
            out[idx] = [float(np.sum(s)) for s in scored]
        return out
