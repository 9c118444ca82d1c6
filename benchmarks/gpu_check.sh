#!/usr/bin/env bash
# The GPU path on a one-GPU machine, in about 7 minutes; the last line is one JSON object:
#   mlm_*      benchmarks/gpu_mlm.py: the gpu-base MLM step in bf16, tokens/s and model FLOPs utilisation
#   generate_*, pg_*  benchmarks/gpu_generate.py: a 0.5B causal LM (random weights), bf16 generation
#              tokens/s batched and one at a time, one policy-gradient step's time and MFU
#   feedback_* `evolve run configs/sentiment.yaml` for FEEDBACK_BUDGET_S with the online learner and the
#              feedback replica on the GPU (random-init encoder: no pretraining in this budget)
#   pairs_*    the seed's example: `evolve run configs/pairs.yaml` for PAIRS_BUDGET_S with a base-size BERT
#              (12 x 768, built from config) pretrained beside the pair classifier, both learners and the
#              replica sharing the GPU: held-out accuracy, encoders re-based onto, learner tokens/s
#   serve_*    benchmarks/serve_throughput.py with the replica on the GPU: batched / unbatched requests/s
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (PYTHON overrides .venv/bin/python; STEPS picks steps,
#        e.g. STEPS="pairs" for the pair run alone: all steps together take longer than one device call)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
EVOLVE="${EVOLVE:-$(dirname "$PY")/evolve}"
OUT="${1:-runs/gpu-check}"
FEEDBACK_BUDGET_S="${FEEDBACK_BUDGET_S:-150}"
PAIRS_BUDGET_S="${PAIRS_BUDGET_S:-300}"
STEPS="${STEPS:-tests mlm generate feedback serve}"
want() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible to torch")'
nvidia-smi -L >&2 || true

if want tests; then
  echo "gpu_check: CUDA unit tests" >&2
  "$PY" -m pytest -q tests/unit/test_gpu_path.py >&2
fi

if want mlm; then
  echo "gpu_check: MLM gpu-base bf16" >&2
  "$PY" benchmarks/gpu_mlm.py --json --preset gpu-base --batch-size 128 --seq-len 128 | tail -1 > "$OUT/mlm.json"
fi

if want generate; then
  echo "gpu_check: generator 0.5B bf16: generation and one policy-gradient step" >&2
  "$PY" benchmarks/gpu_generate.py --json --preset 0.5b | tail -1 > "$OUT/generate.json"
fi

if want feedback; then
  echo "gpu_check: feedback loop, GPU learner and replica, ${FEEDBACK_BUDGET_S}s" >&2
  "$EVOLVE" run configs/sentiment.yaml --budget-s "$FEEDBACK_BUDGET_S" --run-dir "$OUT/feedback" \
      --set learner.use_gpu=true --set serving.replica_num_gpus=0.25 --set cluster.num_cpus=8 \
      --set loops.sentiment_mlm=null --set loops.sentiment.model.encoder_loop=null >&2
fi

if want pairs; then
  echo "gpu_check: pairs, a base-size BERT pretrained beside the classifier, ${PAIRS_BUDGET_S}s" >&2
  "$EVOLVE" run configs/pairs.yaml --budget-s "$PAIRS_BUDGET_S" --run-dir "$OUT/pairs" \
      --set learner.use_gpu=true --set "learner.resources_per_worker={GPU: 0.4}" \
      --set serving.replica_num_gpus=0.2 --set cluster.num_cpus=8 \
      --set "loops.pairs_mlm.model={num_layers: 12, hidden_size: 768, num_heads: 12, intermediate_size: 3072}" \
      --set loops.pairs_mlm.threads_per_worker=null --set loops.pairs_mlm.batch_size=64 \
      --set loops.pairs_mlm.eval_every=50 >&2
fi

if want serve; then
  echo "gpu_check: serve throughput, GPU replica" >&2
  "$PY" benchmarks/serve_throughput.py --json --model feedback --num-gpus 1 --num-cpus 8 --clients 64 \
      --seconds 20 | tail -1 > "$OUT/serve.json"
fi

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])


def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else {}


mlm, serve, gen = read("mlm.json"), read("serve.json"), read("generate.json")
loop = read("feedback/summary.json").get("loops", {}).get("sentiment", {})
pairs_run = read("pairs/summary.json").get("loops", {})
pairs, pretrain = pairs_run.get("pairs", {}), pairs_run.get("pairs_mlm", {})
print(json.dumps({
    "device": mlm.get("device"), "mlm_preset": mlm.get("preset"), "mlm_bf16": mlm.get("bf16"),
    "mlm_tokens_per_s": mlm.get("tokens_per_s"), "mlm_mfu": mlm.get("mfu"),
    "feedback_heldout_accuracy": loop.get("heldout_accuracy"),
    "feedback_initial_heldout_accuracy": loop.get("initial_heldout_accuracy"),
    "feedback_events": loop.get("feedback_events"), "feedback_learner_updates": loop.get("learner_updates"),
    "pairs_heldout_accuracy": pairs.get("heldout_accuracy"),
    "pairs_initial_heldout_accuracy": pairs.get("initial_heldout_accuracy"),
    "pairs_feedback_events": pairs.get("feedback_events"), "pairs_learner_updates": pairs.get("learner_updates"),
    "pairs_encoders": [e["encoder_version"] for e in pairs.get("encoders", [])],
    "pairs_mlm_tokens_per_s": pretrain.get("tokens_per_s"), "pairs_mlm_masked_accuracy": pretrain.get("masked_accuracy"),
    "serve_batched_rps": serve.get("batched_rps"), "serve_unbatched_rps": serve.get("unbatched_rps"),
    "serve_ratio": serve.get("ratio"),
    "generate_params": gen.get("params"), "generate_tokens_per_s_batched": gen.get("tokens_per_s_batched"),
    "generate_tokens_per_s_unbatched": gen.get("tokens_per_s_unbatched"),
    "generate_ratio": gen.get("batched_over_unbatched"), "pg_step_s": gen.get("pg_step_s"), "pg_mfu": gen.get("pg_mfu"),
}))
EOF
