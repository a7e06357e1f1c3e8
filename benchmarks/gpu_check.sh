#!/usr/bin/env bash
# The GPU check of the training engine (issue 6), one prepared script for a lent GPU machine:
#   1. benchmarks/train_step.py at real vocabularies (Llama-3 x Qwen3) in bf16;
#   2. benchmarks/losses.py on the GPU (kd, gold, pkl, hkl; TRL is CPU-only and skipped);
#   3. a 2-teacher (kd + P-KL) training run of a ~90M-parameter student for a few hundred steps.
# Needs XBENCH_CACHE with the llama3/qwen3 tokenizers (nothing can be downloaded there) and, if
# hydra/omegaconf are missing, wheels in .whl/. Writes logs to ${OUT:-/tmp/xbench-gpu}.
set -uo pipefail
OUT=${OUT:-/tmp/xbench-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
STEPS=${STEPS:-300}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

echo "== train_step (real vocab, bf16)"
python3 -m benchmarks.train_step --device cuda --real --threads 8 --batch 8 --seq-len 1024 \
  --reps 10 2>&1 | grep -v "Loading\|Writing" | tee "$OUT/train_step.txt"

echo "== losses (GPU)"
timeout 240 python3 benchmarks/losses.py --device cuda --methods kd,gold,pkl,hkl 2>&1 \
  | tee "$OUT/losses.txt"

echo "== 2-teacher training run"
rm -rf "$OUT/run"
timeout 300 python3 -m xbench.train +experiment=gpu_check cell=kd+pkl train.steps="$STEPS" \
  run_dir="$OUT/run" 2>&1 | grep -v "Loading\|Writing" | tail -5
python3 - "$OUT/run/metrics.jsonl" <<'PY' | tee "$OUT/train_summary.txt"
import json, statistics, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
late = rows[len(rows) // 2:]
print(f"steps={rows[-1]['step']} loss {rows[0]['train/loss']:.3f} -> {rows[-1]['train/loss']:.3f}")
print(f"tokens_per_s(median, 2nd half)={statistics.median(r['train/tokens_per_s'] for r in late):.0f}")
print(f"step_s(median)={statistics.median(r['train/step_s'] for r in late):.3f}")
print(f"peak_gpu_mem_mb={max(r['train/peak_mem_mb'] for r in rows):.0f}")
print("per-teacher keys:", sorted(k for k in rows[-1] if k.startswith("train/loss_kd/")))
PY
