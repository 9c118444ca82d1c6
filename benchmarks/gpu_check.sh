#!/usr/bin/env bash
# The GPU path on a one-GPU machine, in about 7 minutes; the last line is one JSON object:
#   mlm_*      benchmarks/gpu_mlm.py: the gpu-base MLM step in bf16, tokens/s and model FLOPs utilisation
#   generate_*, pg_*  benchmarks/gpu_generate.py: a 0.5B causal LM (random weights), bf16 generation
#              tokens/s batched and one at a time, one policy-gradient step's time and MFU
#   feedback_* `evolve run configs/sentiment.yaml` for FEEDBACK_BUDGET_S with the online learner and the
#              feedback replica on the GPU (random-init encoder: no pretraining in this budget)
#   serve_*    benchmarks/serve_throughput.py with the replica on the GPU: batched / unbatched requests/s
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (PYTHON overrides .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
EVOLVE="${EVOLVE:-$(dirname "$PY")/evolve}"
OUT="${1:-runs/gpu-check}"
FEEDBACK_BUDGET_S="${FEEDBACK_BUDGET_S:-150}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible to torch")'
nvidia-smi -L >&2 || true

echo "gpu_check: CUDA unit tests" >&2
"$PY" -m pytest -q tests/unit/test_gpu_path.py >&2

echo "gpu_check: MLM gpu-base bf16" >&2
"$PY" benchmarks/gpu_mlm.py --json --preset gpu-base --batch-size 128 --seq-len 128 | tail -1 > "$OUT/mlm.json"

echo "gpu_check: generator 0.5B bf16: generation and one policy-gradient step" >&2
"$PY" benchmarks/gpu_generate.py --json --preset 0.5b | tail -1 > "$OUT/generate.json"

echo "gpu_check: feedback loop, GPU learner and replica, ${FEEDBACK_BUDGET_S}s" >&2
"$EVOLVE" run configs/sentiment.yaml --budget-s "$FEEDBACK_BUDGET_S" --run-dir "$OUT/feedback" \
    --set learner.use_gpu=true --set serving.replica_num_gpus=0.25 --set cluster.num_cpus=8 >&2

echo "gpu_check: serve throughput, GPU replica" >&2
"$PY" benchmarks/serve_throughput.py --json --model feedback --num-gpus 1 --num-cpus 8 --clients 64 \
    --seconds 20 | tail -1 > "$OUT/serve.json"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
mlm = json.loads((out / "mlm.json").read_text())
serve = json.loads((out / "serve.json").read_text())
gen = json.loads((out / "generate.json").read_text())
run = json.loads((out / "feedback" / "summary.json").read_text())
loop = next(iter(run["loops"].values()))
print(json.dumps({
    "device": mlm["device"], "mlm_preset": mlm["preset"], "mlm_bf16": mlm["bf16"],
    "mlm_tokens_per_s": mlm["tokens_per_s"], "mlm_mfu": mlm["mfu"],
    "feedback_heldout_accuracy": loop.get("heldout_accuracy"),
    "feedback_initial_heldout_accuracy": loop.get("initial_heldout_accuracy"),
    "feedback_events": loop.get("feedback_events"), "feedback_learner_updates": loop.get("learner_updates"),
    "serve_batched_rps": serve["batched_rps"], "serve_unbatched_rps": serve["unbatched_rps"],
    "serve_ratio": serve["ratio"],
    "generate_params": gen["params"], "generate_tokens_per_s_batched": gen["tokens_per_s_batched"],
    "generate_tokens_per_s_unbatched": gen["tokens_per_s_unbatched"],
    "generate_ratio": gen["batched_over_unbatched"], "pg_step_s": gen["pg_step_s"], "pg_mfu": gen["pg_mfu"],
}))
EOF
