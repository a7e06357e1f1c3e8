#!/usr/bin/env bash
# The GPU check of the paper-scale run path, one prepared script for a bare CUDA machine that has
# python3 with torch, transformers and tokenizers but no network (what worked:
# ../shared/notes/gpu_offline_node.md).
#
#   benchmarks/gpu_check.sh --prepare   where a package index and the xbench cache exist: wheels of
#                                       what the node lacks -> .gpu/wheels; the Llama-3 and Qwen3
#                                       tokenizers and their W -> .gpu/cache (~60 MB; .gpu is
#                                       ignored by git: carry it with the checkout)
#   benchmarks/gpu_check.sh             on the GPU node: installs the wheels into $OUT/site, then
#                                       1. benchmarks/losses.py on the GPU (kd, gold, pkl, hkl, uld);
#                                       2. benchmarks/paper_cells.py: tokens/s and peak memory of
#                                          paper-shape ce, pkl, gold and three-teacher cells
#   benchmarks/gpu_check.sh --dry-run   the same steps on the CPU at tiny widths (checks the script)
#
# Logs go to ${OUT:-/tmp/xbench-gpu}. About 6-8 minutes on one H200 (estimated, not yet run).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD GPU=$PWD/.gpu OUT=${OUT:-/tmp/xbench-gpu} MODE=${1:-run}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

if [ "$MODE" = --prepare ]; then
  rm -rf "$GPU" && mkdir -p "$GPU/wheels" "$GPU/cache/tokenizers" "$GPU/cache/projections"
  $PY -m pip download -q --no-deps -d "$GPU/wheels" hydra-core==1.3.2 omegaconf==2.3.0 \
    hydra-submitit-launcher==1.2.0 submitit==1.5.4 || exit 1
  # antlr4 4.9.3 is published as an sdist only; the wheel built from it is pure Python.
  $PY -m pip wheel -q --no-deps -w "$GPU/wheels" antlr4-python3-runtime==4.9.3 || exit 1
  SRC=${XBENCH_CACHE:-$HOME/.cache/xbench}
  cp -r "$SRC/tokenizers/llama3" "$SRC/tokenizers/qwen3" "$GPU/cache/tokenizers/" || exit 1
  # Only the Llama-3 x Qwen3 W (V_S 128,256 x V_T 151,669) is needed.
  $PY - "$SRC/projections" "$GPU/cache/projections" <<'PY' || exit 1
import json, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
found = [d for d in src.iterdir() if (d / "meta.json").exists()
         and (lambda m: (m["V_S"], m["V_T"]) == (128256, 151669))(json.loads((d / "meta.json").read_text()))]
if not found:
    sys.exit(f"no Llama-3 x Qwen3 W in {src}: build it once with xbench.tokenpair.projection.load_or_build")
for d in found:
    shutil.copytree(d, dst / d.name)
PY
  du -sh "$GPU"
  exit 0
fi

# Whatever the node lacks comes from the carried wheels, installed outside the system python.
if ! $PY -c "import hydra, omegaconf, submitit" 2>/dev/null; then
  [ -d "$GPU/wheels" ] || { echo "hydra/omegaconf missing and no .gpu/wheels: run --prepare first"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --target "$OUT/site" "$GPU"/wheels/*.whl || exit 1
fi
export PYTHONPATH=$REPO:$OUT/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
if [ -z "${XBENCH_CACHE:-}" ] && [ -d "$GPU/cache" ]; then
  # A writable copy: the miniature world's corpus is generated into the cache on first use.
  mkdir -p "$OUT/cache" && cp -rn "$GPU/cache/." "$OUT/cache/" && export XBENCH_CACHE=$OUT/cache
fi

if [ "$MODE" = --dry-run ]; then
  echo "== losses (CPU, kd only, 16 positions: the script runs from a plain checkout)"
  (cd /tmp && env -u PYTHONPATH $PY "$REPO/benchmarks/losses.py" --methods kd \
    --positions-per-seq 16) 2>&1 | tee "$OUT/losses.txt"
  echo "== paper-shape cells (CPU, tiny widths, real vocabularies)"
  $PY benchmarks/paper_cells.py --dry-run --out "$OUT/paper_cells" 2>&1 | tee "$OUT/paper_cells.txt"
  exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
echo "== losses (GPU; warm-up at the timed shape excluded)"
timeout 180 $PY benchmarks/losses.py --device cuda --methods kd,gold,pkl,hkl,uld 2>&1 | tee "$OUT/losses.txt"
echo "== paper-shape cells (seq 2048, bf16 autocast, bf16 teachers)"
timeout 420 $PY benchmarks/paper_cells.py --out "$OUT/paper_cells" 2>&1 | tee "$OUT/paper_cells.txt"
