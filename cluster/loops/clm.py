"""The CLM loop: next-token pretraining of a causal LM, published to the registry with its
held-out perplexity beside the unigram perplexity of the same text.

It is the MLM loop (`cluster/loops/mlm.py`: corpus, tokenizer, Ray Data blocks, Ray Train,
budget, resume, publish) with the causal objective; what is new here is its data (the unigram
baseline), its figures, and the continuations of fixed prompts it prints once it has published:
the published version loaded back from the registry (`core.models.causal_lm.load_causal_lm`, the
call a generator serving it makes), so the samples are what a user of that version would get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.loop import round_or_none
from cluster.loops.mlm import MLMLoop
from core.data.clm import prepare_clm_data
from core.data.mlm import MLMData
from learners.clm import CLMObjective, CLMSetup


class CLMLoop(MLMLoop):
    CURVE_KEYS = ("step", "tokens", "train_s", "perplexity", "next_token_accuracy", "eval_loss")
    METRICS = ("perplexity", "unigram_perplexity", "next_token_accuracy", "eval_loss")
    INFO = {"objective": "clm", "kind": "causal-lm"}
    unigram: float | None = None  # the baseline, once prepare() has scored it
    samples: list[dict[str, str]] | None = None

    def prepare(self) -> None:
        super().prepare()
        facts = self.data.facts
        self.unigram = facts["unigram_perplexity"]
        self.ctx.say(f"evolve: {self.name}: unigram perplexity of the held-out text {facts['unigram_perplexity']:.1f} "
                     f"({facts['heldout_targets']:,} tokens): the model's perplexity is read against it")

    def prepare_data(self, tokenizer_dir: Path) -> MLMData:
        return prepare_clm_data(self.mlm, tokenizer_dir=tokenizer_dir)

    def objective(self) -> tuple[Any, Any]:
        clm, data = self.mlm, self.data
        return CLMObjective, CLMSetup(
            clm=clm, model_config=data.model_config.to_dict(),
            pretrained_dir=str(clm.model.pretrained_dir) if clm.model.pretrained_dir else None,
            tokenizer_files=data.tokenizer_files(), heldout=data.heldout_blocks, info=data.facts)

    def eval_figures(self, last_eval: dict[str, Any]) -> dict[str, Any]:
        ppl = last_eval.get("perplexity")
        return {"ppl": round_or_none(ppl, 1), "unigram_ppl": round_or_none(self.unigram, 1)}

    def published_line(self, summary: dict[str, Any]) -> str:
        return (f"held-out perplexity {summary['perplexity']:.1f}, unigram perplexity "
                f"{summary['unigram_perplexity']:.1f}, ratio {summary['perplexity_ratio']:.3f}")

    def summary_figures(self, first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
        unigram, ppl = self.unigram, last.get("perplexity")
        return {"initial_perplexity": first.get("perplexity"), "perplexity": ppl, "unigram_perplexity": unigram,
                "perplexity_ratio": None if ppl is None or not unigram else ppl / unigram,
                "next_token_accuracy": last.get("next_token_accuracy"), "eval_loss": last.get("eval_loss"),
                "samples": self.samples}

    def finish(self) -> None:
        super().finish()
        if self.published_version is not None:
            self.samples = self._sample(self.published_version)

    def _sample(self, version: int) -> list[dict[str, str]]:
        """Continuations of the configured prompts by the published version, into the log and events."""
        from core.models.causal_lm import load_causal_lm, sample_continuations

        s = self.mlm.samples
        model, tokenizer = load_causal_lm(self.ctx.registry, self.mlm.policy_id, version)
        texts = sample_continuations(model, tokenizer, s.prompts, s.max_new_tokens, s.temperature, s.top_p, s.seed)
        samples = [{"prompt": p, "continuation": t} for p, t in zip(s.prompts, texts)]
        for sample in samples:
            self.ctx.say(f"evolve: {self.name} v{version} sample: {sample['prompt']} | {sample['continuation']}")
        self.event("samples", version=version, samples=samples)
        return samples
