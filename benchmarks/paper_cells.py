"""Tokens/s and peak GPU memory of paper-shape cells, each in its own ``xbench.train`` process.

Cells of ``conf/experiment/gpu_paper.yaml``: ce, pkl and gold at micro-batch 8 (the settings of
the figures in ../shared/notes/gpu_offline_node.md: seq 2048, bf16 autocast; teachers now bf16 by
default), and the three-teacher cell at llama1b_vs_gold's micro-batch 4. Per cell: median
``train/tokens_per_s`` over the second half of the steps, the peak of ``train/peak_mem_mb``, and
engine.memory's estimate for the same config beside it. A run is stopped once its last step is
logged: the final checkpoint of a 1B student with its optimizer (~15 GB) is not waited for.

    python benchmarks/paper_cells.py [--steps 10] [--cells ce,pkl,gold,three] [--out DIR]
    python benchmarks/paper_cells.py --dry-run   # the same driver on the CPU: 1-layer models of
                                                 # width 64 with the real vocabularies, 2 steps

Ends with one ``RESULT`` line (JSON); the table is also written to ``OUT/paper_cells.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MICRO = {"ce": 8, "pkl": 8, "gold": 8, "three": 4}
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "intermediate_size": 64,
}


def overrides(cell: str, dry_run: bool, steps: int) -> list[str]:
    out = [f"cell={cell}", f"train.steps={steps}", f"train.micro_batch_size={MICRO[cell]}"]
    if dry_run:
        out += ["train.device=cpu", "data.seq_len=64", "data.num_workers=0", "world.n_train=200"]
        out += ["train.global_batch_size=8"]
        for spec in ("student", "zoo.qwen3_4b", "zoo.phi4_mini", "zoo.llama3_2_3b"):
            out += [f"{spec}.arch.{k}={v}" for k, v in TINY.items()]
    return out


def run_cell(cell: str, args: argparse.Namespace) -> dict:
    run_dir = Path(args.out) / cell
    metrics = run_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    ov = overrides(cell, args.dry_run, args.steps)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with open(Path(args.out) / f"{cell}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xbench.train", "+experiment=gpu_paper", *ov,
             f"run_dir={run_dir}"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": path},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        t0, rows = time.time(), []
        while time.time() - t0 < args.cell_timeout:
            done = metrics.exists() and metrics.read_text()
            rows = [json.loads(x) for x in done.splitlines()] if done else []
            if (rows and rows[-1]["step"] == args.steps) or proc.poll() is not None:
                break
            time.sleep(1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if not rows or rows[-1]["step"] != args.steps:
        tail = (Path(args.out) / f"{cell}.log").read_text()[-2000:]
        return {"cell": cell, "error": f"no metrics for step {args.steps}", "log_tail": tail}
    late = rows[len(rows) // 2 :]
    return {
        "cell": cell,
        "micro_batch": MICRO[cell],
        "tokens_per_s": statistics.median(r["train/tokens_per_s"] for r in late),
        "step_s": statistics.median(r["train/step_s"] for r in late),
        "peak_gb": max(r["train/peak_mem_mb"] for r in rows) * 2**20 / 1e9,
        "estimate_gb": estimate(ov),
        "wall_s": time.time() - t0,
    }


def estimate(ov: list[str]) -> float | None:
    """xbench.engine.memory's per-GPU estimate of the same cell config (GB)."""
    from hydra import compose, initialize_config_dir

    from xbench.config.cells import resolve_cell
    from xbench.engine.memory import estimate as mem_estimate
    from xbench.engine.memory import use_checkpointing

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = resolve_cell(compose("sweep", overrides=["+experiment=gpu_paper", *ov]))[0]
    est = mem_estimate(cfg, checkpointing=use_checkpointing(cfg))
    return None if est is None else round(est["total"], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="ce,pkl,gold,three")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/xbench-gpu") + "/paper_cells")
    ap.add_argument("--cell-timeout", type=float, default=240.0, help="seconds per cell")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny widths, real vocabularies")
    args = ap.parse_args()
    if args.dry_run:
        args.steps = min(args.steps, 2)
    sys.path.insert(0, str(REPO))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = []
    for cell in args.cells.split(","):
        r = run_cell(cell, args)
        results.append(r)
        if "error" in r:
            print(f"{cell:6s} FAILED: {r['error']}\n{r['log_tail']}", flush=True)
        else:
            print(
                f"{cell:6s} micro={r['micro_batch']} tokens/s={r['tokens_per_s']:,.0f} "
                f"s/step={r['step_s']:.3f} peak={r['peak_gb']:.1f} GB "
                f"(estimate {r['estimate_gb']} GB) wall={r['wall_s']:.0f} s",
                flush=True,
            )
    (Path(args.out) / "paper_cells.json").write_text(json.dumps(results, indent=2))
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
