"""A generator learning from judged completions: Evolve's live `generate` loop against TRL's GRPOTrainer.

    .venv/bin/python benchmarks/generate_vs_trl.py --json                 # both sides, --budget-s each
    .venv/bin/python benchmarks/generate_vs_trl.py --budget-s 120 --json  # a short comparison
    .venv/bin/python benchmarks/generate_vs_trl.py --evolve-run runs/generate --json   # read a finished run

Needs the `bench` extra (`pip install -e '.[bench]'`: TRL) and a pretrained causal LM (policy `lm`
in runs/clm/registry, what `evolve run configs/clm.yaml` publishes).  The two sides run one after
the other, never at once, each for `--budget-s` of wall time; both start from that model, draw
from the same traffic prompts (core/data/prompts.py) with the preset's max_new_tokens and
temperature (top-p 1, no top-k), and are rewarded by the same judge (core/models/judge.py):

* evolve: `python -m cluster.cli run configs/generate.yaml --budget-s B` as a subprocess.  Simulated
  users ask Serve for completions and rate them by the judge as the preset's `users` say (ratings
  of several completions, preferences, single ratings, thumbs); the policy-gradient learner learns
  from the joined rows and the gate promotes what passes.  Its curve is the users' judged reward of
  the completions they were served (the mean over each user actor's last 300) against completions
  served and time, from the run's progress events; its model is the live version at the end.
* trl: `GRPOTrainer` in this process on the same model, the prompts as its dataset, the judge's
  probability itself as the reward (a cleaner signal than a thumb), with the preset's shared
  settings: learning rate, KL coefficient (`beta` = `kl_coef`), clip epsilon 0.2, 32 completions an
  update (`per_device_train_batch_size`, the preset's batch), 4 a prompt (`num_generations`, the
  users' `several_n`), constant learning rate, dropout off, gradient norm clip 1; everything else
  TRL's default (one update per generated batch: `num_iterations` 1).  Its curve is each batch's
  mean judged reward against completions generated and time.  Its model is kept twice: when it has
  generated as many completions as evolve served (equal completions) and at the end of the budget
  (equal time).

Each model is then scored the same way (benchmarks/_generate_eval.py): 2 completions of each of the
200 held-out prompts drawn by the model itself, their mean judged reward, and its mean per-token KL
to the starting model on those samples.  `reward_ratio` = evolve's held-out reward / TRL's at equal
completions; `kl_evolve`, `kl_trl` the KL of those two models.  `completions_per_s` is the engine
serving evolve's completions (core/models/generator.py, the starting model, on one torch thread as a
Serve replica of under one CPU runs; `--engine-threads`) in batches of the preset's `max_batch_size`,
`batched_over_unbatched` that rate over one prompt a call (`--only engine`: just this).  A plot of
both curves and the JSON go to `--out` (runs/bench/).  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _generate_eval import judged, value_at, window_mean  # noqa: E402
from machine_watch import MachineWatch, busy  # noqa: E402

LOOP = "generate"


def log(msg: str) -> None:
    print(f"[generate_vs_trl] {msg}", file=sys.stderr, flush=True)


def preset(config: Path) -> dict[str, Any]:
    """The settings both sides share, read from the preset (its defaults where it is silent)."""
    from core.config.loader import load_config

    gen = load_config(config).loops[LOOP]
    users, learning = gen.users, gen.learning
    return {
        "registry": gen.model.start_registry, "policy": gen.model.start_policy,
        "max_new_tokens": users.max_new_tokens or gen.serving.default_max_new_tokens,
        "temperature": users.temperature if users.temperature is not None else gen.serving.default_temperature,
        "lr": learning.lr, "kl_coef": learning.kl_coef, "clip_epsilon": learning.clip_epsilon,
        "batch_size": learning.batch_size, "group": users.several_n, "max_batch_size": gen.serving.max_batch_size,
        "prompts": gen.prompts.model_dump(),
    }


# ---- evolve ------------------------------------------------------------------------------------
def run_evolve(config: Path, budget_s: float, run_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "cluster.cli", "run", str(config), "--budget-s", str(budget_s),
           "--run-dir", str(run_dir)]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    log(f"evolve: {' '.join(cmd)}")
    watch = MachineWatch()
    t0 = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        watch.start(proc.pid)
        try:
            code = proc.wait(timeout=budget_s + 900)
        finally:
            machine = watch.stop()
            if proc.poll() is None:
                proc.kill()
    if code != 0:
        raise SystemExit(f"evolve: exit code {code}; see {run_dir.parent / (run_dir.name + '.log')}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "machine": machine}


def read_evolve(run_dir: Path) -> dict[str, Any]:
    """The loop's curves from events.jsonl and its summary (the live version, its figures)."""
    summary = json.loads((run_dir / "summary.json").read_text())["loops"][LOOP]
    progress = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev.get("loop") == LOOP and ev.get("event") == "progress":
            progress.append(ev)
    if not progress:
        raise SystemExit(f"{run_dir}: no progress events of loop {LOOP!r}")
    t0 = progress[0]["time"]
    curve = [{"elapsed_s": round(ev["time"] - t0, 1), "completions": ev.get("completions") or 0,
              "reward": ev.get("user_reward"), "heldout_reward": ev.get("reward"), "kl": ev.get("kl"),
              "version": ev.get("version"), "updates": ev.get("updates")} for ev in progress]
    return {"summary": summary, "curve": curve, "completions": curve[-1]["completions"],
            "elapsed_s": curve[-1]["elapsed_s"]}


# ---- trl ---------------------------------------------------------------------------------------
def prompt_tokenizer(model: Any, tokenizer: Any) -> Any:
    """A copy of the tokenizer whose plain encoding is the engine's prompt encoding (the start token,
    then the prompt's tokens): GRPOTrainer tokenizes prompts with the tokenizer's defaults."""
    import copy

    from tokenizers.processors import TemplateProcessing

    from core.models.causal_lm import prompt_ids, text_bounds

    begin, end = text_bounds(model.config, tokenizer)
    name = tokenizer.convert_ids_to_tokens(begin)
    out = copy.deepcopy(tokenizer)
    out.eos_token = tokenizer.convert_ids_to_tokens(end)  # TRL ends completions at the tokenizer's eos
    out.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{name} $A", pair=f"{name} $A $B", special_tokens=[(name, begin)])
    probe = "质量很好 ok"
    if out(text=[probe])["input_ids"][0] != prompt_ids(model, tokenizer, probe) or out.eos_token_id != end:
        raise SystemExit("trl: cannot make the tokenizer encode prompts as the engine does")
    return out


def run_trl(shared: dict[str, Any], traffic: list[str], judge: Any, budget_s: float, equal_at: int | None,
            threads: int, seed: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from core.models.causal_lm import decode, load_causal_lm

    if threads > 0:
        torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    start, tokenizer = load_causal_lm(shared["registry"], shared["policy"])
    # with beta > 0 TRL loads its reference model from the policy's own path: give it one
    saved = tempfile.mkdtemp(prefix="evolve-trl-v1-")
    start.save_pretrained(saved)
    model = AutoModelForCausalLM.from_pretrained(saved, local_files_only=True, use_safetensors=True)
    tok = prompt_tokenizer(model, tokenizer)
    batches: list[dict[str, float]] = []
    clock = {"t0": time.perf_counter()}

    def judge_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
        rewards = judge.reward(prompts, [decode(tokenizer, list(ids)) for ids in completion_ids])
        seen = (batches[-1]["completions"] if batches else 0) + len(rewards)
        batches.append({"elapsed_s": round(time.perf_counter() - clock["t0"], 2), "completions": seen,
                        "reward": float(rewards.mean())})
        return rewards.tolist()

    kept: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            seen = batches[-1]["completions"] if batches else 0
            if equal_at is not None and "equal" not in kept and seen >= equal_at:
                kept["equal"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                kept["equal_at"] = {"completions": seen, "elapsed_s": round(time.perf_counter() - clock["t0"], 1),
                                    "step": state.global_step}
            if time.perf_counter() - clock["t0"] >= budget_s:
                control.should_training_stop = True

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="evolve-trl-"), per_device_train_batch_size=shared["batch_size"],
        num_generations=shared["group"], max_completion_length=shared["max_new_tokens"],
        temperature=shared["temperature"], top_p=1.0, top_k=0, learning_rate=shared["lr"], beta=shared["kl_coef"],
        epsilon=shared["clip_epsilon"], lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        disable_dropout=True, max_steps=1_000_000, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, bf16=False, seed=seed, dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=judge_reward, args=args, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": list(traffic)}), callbacks=[Clock()])
    watch = MachineWatch()
    watch.start(os.getpid())
    try:
        trainer.train()
    finally:
        machine = watch.stop()
    final = trainer.model.eval()
    logged_kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    return {"batches": batches, "model": final, "tokenizer": tokenizer, "equal_state": kept.get("equal"),
            "equal_at": kept.get("equal_at"), "steps": trainer.state.global_step,
            "completions": batches[-1]["completions"] if batches else 0,
            "elapsed_s": batches[-1]["elapsed_s"] if batches else 0.0,
            "logged_kl_last": logged_kl[-1] if logged_kl else None, "torch_threads": torch.get_num_threads(),
            "machine": machine}


# ---- serving speed -----------------------------------------------------------------------------
def engine_speed(shared: dict[str, Any], prompts: list[str], threads: int, repeats: int = 2) -> dict[str, float]:
    """Completions per second of the starting model's engine: `max_batch_size` prompts a call, then one a
    call, on `threads` torch threads (a Serve replica of under one CPU gets one: Ray sets OMP_NUM_THREADS)."""
    import torch

    from core.models.causal_lm import load_causal_lm
    from core.models.generator import Sampling, TransformersEngine

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)

    engine = TransformersEngine(*load_causal_lm(shared["registry"], shared["policy"]))
    size = shared["max_batch_size"]

    def rate(per_call: int) -> float:
        engine.generate(prompts[:per_call], Sampling(max_new_tokens=shared["max_new_tokens"], seed=0))  # warm-up
        t0, done = time.perf_counter(), 0
        for r in range(repeats):
            for i in range(0, len(prompts), per_call):
                chunk = prompts[i:i + per_call]
                sampling = Sampling(max_new_tokens=shared["max_new_tokens"], temperature=shared["temperature"],
                                    seed=1000 * r + i)
                done += sum(len(cs) for cs in engine.generate(chunk, sampling))
        return done / (time.perf_counter() - t0)

    batched, single = rate(size), rate(1)
    torch.set_num_threads(before)
    return {"batched": round(batched, 1), "unbatched": round(single, 1), "batch": size,
            "ratio": round(batched / single, 2), "threads": torch.get_num_threads() if threads <= 0 else threads}


# ---- the comparison ----------------------------------------------------------------------------
def plot(path: Path, evolve: dict[str, Any] | None, trl: dict[str, Any] | None, scores: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, x, label in ((axes[0], "completions", "completions seen"), (axes[1], "elapsed_s", "seconds of training")):
        if evolve:
            pts = [p for p in evolve["curve"] if p["reward"] is not None]
            ax.plot([p[x] for p in pts], [p["reward"] for p in pts], label="evolve: users' judged reward (last 300)")
        if trl and trl["batches"]:
            b = trl["batches"]
            ax.plot([p[x] for p in b], [p["reward"] for p in b], alpha=0.3, label="trl: batch mean judged reward")
            ax.plot([p[x] for p in b], trailing([p["reward"] for p in b], [p["completions"] for p in b], 300),
                    label="trl: the same, last 300")
        for name, style in (("v1", ":"), ("evolve", "--"), ("trl_equal_completions", "-."), ("trl_end", "--")):
            if name in scores:
                ax.axhline(scores[name]["reward"], linestyle=style, linewidth=1, color="gray")
                ax.annotate(f"held-out {name} {scores[name]['reward']:.3f}", (0, scores[name]["reward"]), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("mean judged reward")
        ax.legend(fontsize=7)
    fig.suptitle("generate: Evolve's live loop vs TRL GRPOTrainer (same model, prompts, judge)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trailing(values: list[float], seen: list[int], window: int) -> list[float]:
    """Each point's mean over the batches of the last `window` completions (each batch weighted by its size)."""
    out = []
    for i in range(len(values)):
        lo = seen[i] - window
        curve = list(zip(seen[:i + 1], values[:i + 1]))
        out.append(window_mean(curve, lo, seen[i]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--config", default=str(ROOT / "configs" / "generate.yaml"))
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall-clock seconds of each side")
    ap.add_argument("--only", choices=["evolve", "trl", "engine"], help="one side only (no ratios), or the engine's speed")
    ap.add_argument("--engine-threads", type=int, default=1, help="torch threads of the engine's speed test; 0 = default")
    ap.add_argument("--evolve-run", help="read evolve from this finished run directory instead of running it")
    ap.add_argument("--run-dir", help="evolve: run here (kept); default a directory under --out")
    ap.add_argument("--trl-threads", type=int, default=0, help="torch threads for TRL; 0 = torch's default")
    ap.add_argument("--heldout-n", type=int, default=2, help="completions of each held-out prompt per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="the plot and the JSON go here")
    args = ap.parse_args()

    import torch

    from core.data.prompts import review_prompts
    from core.models.causal_lm import load_causal_lm
    from core.models.generator import TransformersEngine
    from core.models.judge import ensure_judge

    config, out = Path(args.config), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = preset(config)
    prompts = review_prompts(**shared["prompts"])
    judge = ensure_judge()
    log(f"shared: {json.dumps({k: v for k, v in shared.items() if k != 'prompts'})}; "
        f"{len(prompts.traffic)} traffic, {len(prompts.heldout)} held-out prompts")

    speed = engine_speed(shared, prompts.traffic[:32], args.engine_threads)
    log(f"engine: {speed}")
    if args.only == "engine":
        print(json.dumps({"completions_per_s": speed["batched"], "completions_per_s_unbatched": speed["unbatched"],
                          "batched_over_unbatched": speed["ratio"], "engine_threads": speed["threads"]}))
        return

    evolve = trl = None
    if args.only != "trl":
        run_dir = Path(args.evolve_run or args.run_dir or out / f"generate-evolve-{int(time.time())}")
        ran = {} if args.evolve_run else run_evolve(config, args.budget_s, run_dir)
        evolve = {**read_evolve(run_dir), **ran, "run_dir": str(run_dir)}
        log(f"evolve: {evolve['completions']} completions in {evolve['elapsed_s']} s, "
            f"live v{evolve['summary'].get('live_version')}")
    if args.only != "evolve":
        trl = run_trl(shared, prompts.traffic, judge, args.budget_s, evolve and evolve["completions"],
                      args.trl_threads, args.seed)
        log(f"trl: {trl['completions']} completions in {trl['elapsed_s']} s, {trl['steps']} updates")

    # every model scored the same way, against the same reference
    ref_model, tokenizer = load_causal_lm(shared["registry"], shared["policy"])
    reference = TransformersEngine(ref_model, tokenizer)
    score = dict(prompts=prompts.heldout, judge=judge, n=args.heldout_n, max_new_tokens=shared["max_new_tokens"],
                 seed=args.seed)
    scores = {"v1": judged(load_causal_lm(shared["registry"], shared["policy"])[0], tokenizer, reference, **score)}
    if evolve:
        summary = evolve["summary"]
        live, tok = load_causal_lm(str(Path(evolve["run_dir"]) / "registry"), summary["policy_id"], stage="live")
        scores["evolve"] = judged(live, tok, reference, **score)
    if trl:
        scores["trl_end"] = judged(trl["model"], tokenizer, reference, **score)
        if trl["equal_state"] is not None:
            trl["model"].load_state_dict(trl["equal_state"])
            scores["trl_equal_completions"] = judged(trl["model"], tokenizer, reference, **score)
    for name, s in scores.items():
        log(f"held-out {name}: {json.dumps({k: round(v, 4) for k, v in s.items()})}")

    def r(x: float | None, nd: int = 4) -> float | None:
        return None if x is None else round(x, nd)

    trl_equal = scores.get("trl_equal_completions") or scores.get("trl_end")
    n_equal = evolve["completions"] if evolve else None
    trl_curve = [(b["completions"], b["reward"]) for b in trl["batches"]] if trl else []
    result = {
        "budget_s": args.budget_s,
        "reward_v1": r(scores["v1"]["reward"]),
        "reward_evolve": r(scores.get("evolve", {}).get("reward")),
        "reward_trl": r(trl_equal and trl_equal["reward"]),
        "reward_trl_end": r(scores.get("trl_end", {}).get("reward")),
        "reward_ratio": r(scores["evolve"]["reward"] / trl_equal["reward"]) if evolve and trl else None,
        "reward_ratio_equal_time": r(scores["evolve"]["reward"] / scores["trl_end"]["reward"]) if evolve and trl else None,
        "kl_evolve": r(scores.get("evolve", {}).get("kl")),
        "kl_trl": r(trl_equal and trl_equal["kl"]),
        "kl_trl_end": r(scores.get("trl_end", {}).get("kl")),
        "equal_completions": n_equal,
        "trl_reached_equal_completions": bool(trl and trl["equal_at"]) if evolve else None,
        "trl_equal_at": trl and trl["equal_at"],
        "train_reward_evolve_last300": r(evolve and evolve["curve"][-1]["reward"]),
        "train_reward_trl_last300_at_equal": r(window_mean(trl_curve, n_equal - 300, n_equal)) if evolve and trl else None,
        "completions_evolve": evolve and evolve["completions"],
        "completions_trl": trl and trl["completions"],
        "updates_evolve": evolve and evolve["curve"][-1]["updates"],
        "updates_trl": trl and trl["steps"],
        "served_per_s_evolve": r(evolve["completions"] / evolve["elapsed_s"], 2) if evolve and evolve["elapsed_s"] else None,
        "generated_per_s_trl": r(trl["completions"] / trl["elapsed_s"], 2) if trl and trl["elapsed_s"] else None,
        "completions_per_s": speed["batched"],
        "completions_per_s_unbatched": speed["unbatched"],
        "batched_over_unbatched": speed["ratio"],
        "engine_threads": speed["threads"],
        "promoted_evolve": evolve and evolve["summary"].get("promoted"),
        "refused_evolve": evolve and evolve["summary"].get("refused"),
        "trl_logged_kl_last": r(trl and trl["logged_kl_last"]),
        "trl_torch_threads": trl and trl["torch_threads"],
        "busy_evolve": evolve and evolve.get("machine") and busy(evolve["machine"]),
        "busy_trl": trl and busy(trl["machine"]),
        "torch_threads_here": torch.get_num_threads(),
    }
    result["accepted"] = (result["reward_ratio"] is not None and result["reward_ratio"] >= 1.0
                          and result["kl_evolve"] <= result["kl_trl"])
    plot(out / "generate_vs_trl.png", evolve, trl, scores)
    detail = {**result, "scores": scores, "evolve_curve": evolve and evolve["curve"],
              "trl_batches": trl and trl["batches"], "engine": speed,
              "machine": {"evolve": evolve and evolve.get("machine"), "trl": trl and trl["machine"]}}
    (out / "generate_vs_trl.json").write_text(json.dumps(detail, indent=1, default=str))
    for key, value in result.items():
        print(f"{key:>36}: {value}")
    if args.json:
        print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
