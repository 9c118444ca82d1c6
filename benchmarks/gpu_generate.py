"""The generator on one device: completions/s batched and one at a time, and one policy-gradient step's MFU.

    .venv/bin/python benchmarks/gpu_generate.py --json [--preset 0.5b | tiny] [--device cuda]

The model is the one a `generate` loop builds from its `model:` keys (core/models/generator.py:
`build_causal_lm`, GPT-2's architecture, `n_inner` = 4 x `n_embd`, tied output layer), with random
weights (speed does not depend on them), on a WordPiece tokenizer trained on a slice of the shipped
reviews as the loop trains its own; prompts are 8-character review openings, as the loop's users send.
Presets:
  0.5b  24 blocks x 1280 wide, 20 heads, 256 positions: about 0.48 B weights (the exact count is in
        the output as `params`); bf16 weights for generation on CUDA
  tiny  2 x 64: the whole script in seconds on a CPU (a smoke test)

Generation: `TransformersEngine.generate` (the served engine: left padding, KV cache, per-token
log-probabilities) on `--prompts` prompts x `--n` completions x `--max-new-tokens` in one call
(`batched`), then `--unbatched-prompts` of the same prompts one call and one completion each
(`unbatched`); tokens/s counts the completion tokens returned, and `batched_over_unbatched` is their
ratio.  Temperature 1, no top-p cut.

Policy gradient: `PolicyGradientObjective.step` (the learner's own update: clipped ratios against the
logged log-probabilities, the exact KL to a frozen reference copy, AdamW) on the batched call's
completions laid out as `learners/completion_source.py` lays them out (`pad_completions`), rewards
0 / 1 by a fixed seed, each prompt's completions one group.  On CUDA the step runs under bf16 autocast
with fp32 master weights (`--pg-precision fp32` turns it off).  Timed over `--pg-steps` after
`--pg-warmup` steps.  Model FLOPs per step, PaLM's accounting (as benchmarks/gpu_mlm.py counts):

    per token   8 x N_matmul + 16 x layers x n_embd x seq_len
                (policy forward + backward 6 N + 12 L d T, the reference's forward 2 N + 4 L d T)
    per step    that x the step's tokens (prompt + completion, padding not counted)

N_matmul: the weights of every matrix multiply (the blocks' and the output layer's, which computes
logits at every position; the embedding lookups are not multiplies).  MFU = FLOPs per second / the
device's dense bf16 peak (`--peak-tflops`, or gpu_mlm.py's table); null on CPU.  The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_mlm import peak_tflops  # noqa: E402


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    prompts: int  # prompts in the batched call
    n: int  # completions per prompt
    max_new_tokens: int
    unbatched_prompts: int  # calls of one completion each
    pg_warmup: int
    pg_steps: int
    tokenizer_stride: int  # the tokenizer learns from every k-th review


PRESETS = {
    "0.5b": Preset(24, 1280, 20, 256, prompts=32, n=4, max_new_tokens=64, unbatched_prompts=8,
                   pg_warmup=2, pg_steps=5, tokenizer_stride=20),
    "tiny": Preset(2, 64, 2, 128, prompts=4, n=2, max_new_tokens=8, unbatched_prompts=2,
                   pg_warmup=1, pg_steps=2, tokenizer_stride=200),
}
VOCAB_SIZE = 3000  # the generate loop's default WordPiece vocabulary
OPENING_CHARS = 8  # the loop's prompts: review openings this long


def pick_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_generate: --device {name} asked for, but torch sees no CUDA device "
                       f"(torch {torch.__version__}); run with --device cpu --preset tiny for the smoke test")
    return device


# ---- the model and its inputs ------------------------------------------------------------
def reviews_and_tokenizer(preset: Preset) -> tuple[list[str], Any]:
    from core.data.corpus import review_texts
    from core.models.tokenizer import train_wordpiece

    texts = review_texts()
    return texts, train_wordpiece(texts[:: preset.tokenizer_stride], vocab_size=VOCAB_SIZE, min_frequency=1)


def openings(texts: list[str], count: int, chars: int = OPENING_CHARS) -> list[str]:
    """`count` distinct review openings, spread over the file (its positive and negative halves)."""
    from core.data.prompts import compact

    step = max(1, len(texts) // (4 * count))
    seen: dict[str, None] = {}
    for text in texts[::step]:
        text = compact(text)
        if len(text) >= chars:
            seen.setdefault(text[:chars])
    if len(seen) < count:
        raise ValueError(f"only {len(seen)} distinct openings, {count} asked for")
    picked = list(seen)
    return [picked[round(i * (len(picked) - 1) / max(1, count - 1))] for i in range(count)]


def build_model(tokenizer: Any, preset: Preset) -> Any:
    from core.models.generator import build_causal_lm

    return build_causal_lm(tokenizer, preset.n_layer, preset.n_embd, preset.n_head, preset.n_positions, seed=0)


def matmul_weights(model: torch.nn.Module) -> int:
    """Weights of every matrix multiply: Linear and GPT-2's Conv1D modules, a tied output layer counted
    (it multiplies though it shares the embedding's storage), embedding lookups not."""
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


def pg_flops_per_token(n_matmul: int, layers: int, width: int, seq_len: int) -> float:
    """Policy forward + backward (3 forwards) and the reference's forward: 4 forwards of 2 N + 4 L d T."""
    return 4 * (2 * n_matmul + 4 * layers * width * seq_len)


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    return flops / seconds / (peak * 1e12) if peak and seconds > 0 else None


# ---- generation --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(engine: Any, prompts: list[str], sampling: Any, device: torch.device) -> tuple[list, float, int]:
    """(completions per prompt, seconds, completion tokens returned)."""
    _sync(device)
    t0 = time.perf_counter()
    out = engine.generate(prompts, sampling)
    _sync(device)
    return out, time.perf_counter() - t0, sum(len(c.token_ids) for per in out for c in per)


def generation(engine: Any, prompts: list[str], preset: Preset, device: torch.device) -> dict[str, Any]:
    from core.models.generator import Sampling

    batched = Sampling(max_new_tokens=preset.max_new_tokens, temperature=1.0, top_p=1.0, n=preset.n, seed=0)
    single = Sampling(max_new_tokens=preset.max_new_tokens, temperature=1.0, top_p=1.0, n=1, seed=0)
    engine.generate(prompts[:2], Sampling(max_new_tokens=4, n=2, seed=1))  # warm-up: kernels, allocator
    completions, batched_s, batched_tokens = timed_generate(engine, prompts, batched, device)
    unbatched_s = unbatched_tokens = 0
    for prompt in prompts[: preset.unbatched_prompts]:
        _, seconds, tokens = timed_generate(engine, [prompt], single, device)
        unbatched_s, unbatched_tokens = unbatched_s + seconds, unbatched_tokens + tokens
    per_s_batched, per_s_unbatched = batched_tokens / batched_s, unbatched_tokens / unbatched_s
    return {"completions": completions, "batched_tokens": batched_tokens, "batched_s": batched_s,
            "tokens_per_s_batched": per_s_batched, "unbatched_calls": preset.unbatched_prompts,
            "unbatched_tokens": unbatched_tokens, "unbatched_s": unbatched_s,
            "tokens_per_s_unbatched": per_s_unbatched, "batched_over_unbatched": per_s_batched / per_s_unbatched}


# ---- one policy-gradient step ------------------------------------------------------------
def pg_batch(completions: list[list[Any]], pad_id: int, seed: int = 0) -> Any:
    """The batched call's completions as the learner's source pads them: 0 / 1 rewards, one group a prompt."""
    from core.data.completion_rewards import ScoredCompletion
    from learners.completion_source import pad_completions

    rng = torch.Generator().manual_seed(seed)
    scored = [ScoredCompletion(prompt_ids=c.prompt_ids, token_ids=c.token_ids, logprobs=c.logprobs,
                               reward=float(torch.randint(0, 2, (), generator=rng)), group=f"prompt-{p}",
                               policy_version=1)
              for p, per in enumerate(completions) for c in per if c.token_ids]
    return pad_completions(scored, pad_id)


def pg_objective(weights: dict[str, torch.Tensor], files: dict[str, bytes], device: torch.device) -> Any:
    from core.config.generate import GenerateSection
    from learners.objective import WorkerContext
    from learners.policy_gradient import PGSetup, PolicyGradientObjective

    obj = PolicyGradientObjective()
    obj.setup(PGSetup(section=GenerateSection(), weights=weights, files=files, parent_version=1),
              WorkerContext(device=device))
    return obj


def pg_timing(obj: Any, batch: Any, preset: Preset, device: torch.device, autocast: bool) -> dict[str, Any]:
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)

    def step() -> dict[str, float]:
        with ctx:
            return obj.step(batch)

    for _ in range(preset.pg_warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    metrics = [step() for _ in range(preset.pg_steps)]
    _sync(device)
    step_s = (time.perf_counter() - t0) / preset.pg_steps
    cfg = obj.model.config
    ids = batch.tensors["input_ids"]
    tokens = int(batch.tensors["attention_mask"].sum())
    flops = tokens * pg_flops_per_token(matmul_weights(obj.model), cfg.n_layer, cfg.n_embd, ids.shape[1])
    return {"pg_batch": list(ids.shape), "pg_tokens": tokens, "pg_step_s": step_s, "pg_tokens_per_s": tokens / step_s,
            "pg_flops_per_step": flops, "pg_updates": sum(m.get("updates", 0.0) for m in metrics),
            "pg_loss": metrics[-1]["loss"], "pg_kl": metrics[-1]["kl"]}


# ---- the whole run -----------------------------------------------------------------------
def run(preset_name: str, device: torch.device, pg_bf16: bool = True, peak: float | None = None,
        log: Any = None) -> dict[str, Any]:
    from core.models.generator import TransformersEngine, causal_lm_files

    def say(msg: str) -> None:
        if log is not None:
            print(f"[gpu_generate] {msg}", file=log, flush=True)

    preset = PRESETS[preset_name]
    cuda = device.type == "cuda"
    texts, tokenizer = reviews_and_tokenizer(preset)
    prompts = openings(texts, preset.prompts)
    model = build_model(tokenizer, preset)
    params, n_matmul = sum(p.numel() for p in model.parameters()), matmul_weights(model)
    weights, files = causal_lm_files(model, tokenizer)  # fp32: what the learner starts from
    gen_dtype = torch.bfloat16 if cuda else torch.float32
    say(f"{preset_name} on {device}: {params:,} weights ({n_matmul:,} in matrix multiplies), vocab {len(tokenizer)}, "
        f"generation in {gen_dtype}")
    engine = TransformersEngine(model.to(gen_dtype), tokenizer, str(device))
    gen = generation(engine, prompts, preset, device)
    say(f"generation: {gen['tokens_per_s_batched']:.0f} tokens/s batched, "
        f"{gen['tokens_per_s_unbatched']:.0f} one at a time")
    batch = pg_batch(gen.pop("completions"), engine.pad_id)
    del engine, model
    if cuda:
        torch.cuda.empty_cache()
    autocast = cuda and pg_bf16
    pg = pg_timing(pg_objective(weights, files, device), batch, preset, device, autocast)
    peak = peak_tflops(device, peak)
    say(f"policy-gradient step: {pg['pg_step_s']:.3f} s on {pg['pg_batch']} (bf16 autocast {autocast})")
    return {
        "preset": preset_name, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "model": "gpt2", "n_layer": preset.n_layer, "n_embd": preset.n_embd, "n_head": preset.n_head,
        "vocab": len(tokenizer), "params": params, "matmul_params": n_matmul,
        "generate_dtype": str(gen_dtype).removeprefix("torch."), "prompts": preset.prompts, "n": preset.n,
        "max_new_tokens": preset.max_new_tokens, **_rounded(gen),
        "pg_precision": "bf16 autocast, fp32 weights" if autocast else "fp32", **_rounded(pg),
        "pg_model_tflops_per_s": round(pg["pg_flops_per_step"] / pg["pg_step_s"] / 1e12, 3), "peak_tflops": peak,
        "pg_mfu": _round(mfu(pg["pg_flops_per_step"], pg["pg_step_s"], peak), 4),
    }


def _round(x: Any, digits: int = 3) -> Any:
    """Floats to `digits` decimals, or to 4 significant figures below 1 (a KL of 1e-6 stays readable)."""
    if not isinstance(x, float):
        return x
    return round(x, digits) if abs(x) >= 1 or x == 0 else float(f"{x:.4g}")


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _round(v, 4 if k.endswith("_s") else 3) for k, v in d.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="0.5b", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pg-precision", default="bf16", choices=["bf16", "fp32"],
                    help="the policy-gradient step under bf16 autocast (CUDA only) or in fp32")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    out = run(args.preset, device, pg_bf16=args.pg_precision == "bf16", peak=args.peak_tflops, log=sys.stderr)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
