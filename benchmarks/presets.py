"""How much the formula choice matters: KD per method under each ``kd.semantics`` preset.

One real-vocabulary micro-batch (``conf/experiment/real_vocab_ci.yaml``: width-16 one-layer models
on the real Llama-3 student and Qwen3 teacher tokenizers with the real W; ``kd`` uses the
same-tokenizer Llama-3 teacher), 4 sequences of 64 student tokens, T = 1, seed 0: the same batch
and the same initial weights for every preset. Each (method, preset) is one ``xbench.train``
process of one step; the number is its logged ``train/loss_kd`` (the KD term per unit, before
mixing). ``trl`` defines only gold and uld (TRL has nothing else), so the other cells are refused.

    python benchmarks/presets.py [--methods kd,uld,gold,pkl,hkl,xtoken] [--out DIR]

Prints a markdown table and one ``RESULT`` line (JSON: {method: {preset: kd}}).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("xbench", "authors", "trl")
TRL_METHODS = ("gold", "uld")


def kd_value(method: str, preset: str, out: Path) -> float:
    """``train/loss_kd`` of one step of cell ``method`` under ``kd.semantics=preset``."""
    run_dir = out / f"{method}-{preset}"
    cmd = [
        sys.executable, "-m", "xbench.train", "+experiment=real_vocab_ci", f"cell={method}",
        f"kd.semantics={preset}", "train.steps=1", "data.seq_len=64",
        "train.global_batch_size=4", "train.micro_batch_size=4", "seed=0", f"run_dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} under {preset} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return float(rows[-1]["train/loss_kd"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="kd,uld,gold,pkl,hkl,xtoken")
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: a tmp dir)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="xbench-presets-"))
    table: dict[str, dict[str, float | None]] = {}
    for method in args.methods.split(","):
        table[method] = {
            p: kd_value(method, p, out) if p != "trl" or method in TRL_METHODS else None
            for p in PRESETS
        }
        print(f"{method}: {table[method]}", flush=True)
    print("\n| method | " + " | ".join(PRESETS) + " |\n|---|" + "---|" * len(PRESETS))
    for method, row in table.items():
        cells = ["refused" if v is None else f"{v:.4g}" for v in row.values()]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print("RESULT " + json.dumps(table, sort_keys=True))


if __name__ == "__main__":
    main()
