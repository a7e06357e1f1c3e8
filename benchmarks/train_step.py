"""Step time of a cross-tokenizer P-KL step vs a CE step on the same student, side by side.

The teacher forward is excluded (its logits are computed once, before timing), so the ratio
isolates what P-KL adds to a training step: alignment-indexed chunk distributions, the sparse
projection W^T p_S, the top-k KL, and learned-W updates. Steps alternate between the two
sessions so machine noise hits both alike.

    python -m benchmarks.train_step                       # 4-layer hidden-256 student, mini vocab
    python -m benchmarks.train_step --toy                 # the 0.28M-parameter smoke student
    python -m benchmarks.train_step --device cuda --real  # Llama-3 x Qwen3 vocabularies, bf16

Ends with: ``RESULT pkl_vs_ce_step_ratio=...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Fixed:
    """A teacher runner that replays precomputed logits (teacher forward excluded)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self._logits = logits
        self.forwards = 0

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._logits


def _session(cell: str, overrides: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    from engine_utils import cell_cfg

    from xbench.loop import build_session, to_device

    sess = build_session(cell_cfg(f"cell={cell}", *overrides))
    micro = [next(iter(sess.loader()))]
    batch = to_device(micro[0], sess.info.device)
    for i, t in enumerate(sess.objective.teachers):
        tb = batch["teachers"][i] or batch
        t.runner = _Fixed(t.runner.logits(tb["input_ids"], tb["attention_mask"]))
    return sess, micro


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--real",
        action="store_true",
        help="real vocabularies: Llama-3 student, Qwen3 teacher (offline assets)",
    )
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--override", nargs="*", default=[], help="extra cell config overrides")
    ap.add_argument(
        "--toy",
        action="store_true",
        help="the 0.28M-parameter smoke student instead of the 4-layer, hidden-256 one",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ov = [
        f"train.device={args.device}",
        "train.precision=bf16",
        f"data.seq_len={args.seq_len}",
        f"train.global_batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}",
        "train.steps=1000",
        "world.n_train=400",
        *args.override,
    ]
    if not args.toy and not args.real:
        # The CPU reference student of the shared notes: 4 layers, hidden 256 (~4M parameters).
        arch = (
            "{hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, "
            "intermediate_size: 768, max_position_embeddings: 512}"
        )
        ov.insert(0, f"student.arch={arch}")
    if args.real:
        arch = (
            "{hidden_size: 512, num_hidden_layers: 4, num_attention_heads: 8, "
            "intermediate_size: 1536, max_position_embeddings: 2048}"
        )
        ov += [
            "student.tokenizer=llama3",
            f"student.arch={arch}",
            "zoo.tiny_A.tokenizer=qwen3",
            f"zoo.tiny_A.arch={arch}",
        ]
    sessions = {name: _session(cell, ov) for name, cell in (("ce", "ce"), ("pkl", "pkl-A"))}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for rep in range(args.warmup + args.reps):
        for name, (sess, micro) in sessions.items():
            _sync(args.device)
            t0 = time.perf_counter()
            sess.forward_backward(micro, with_stats=False)
            sess.optimizer_step()
            _sync(args.device)
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    sess = sessions["pkl"][0]
    n_tok = int(sessions["pkl"][1][0]["attention_mask"].sum())
    v_s = sess.student.get_output_embeddings().weight.shape[0]
    v_t = sess.objective.teachers[0].projection.meta["V_T"]
    n_params = sum(p.numel() for p in sess.student.parameters())
    print(f"student params={n_params / 1e6:.2f}M")
    print(
        f"device={args.device} threads={args.threads} batch={args.batch}x{args.seq_len} "
        f"tokens={n_tok} V_S={v_s} V_T={v_t} reps={args.reps} (median, teacher forward excluded)"
    )
    for k, v in med.items():
        print(f"  {k:4s} step {v * 1000:9.1f} ms   {n_tok / v:10.0f} tokens/s")
    if args.device.startswith("cuda"):
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    ratio = med["pkl"] / med["ce"]
    print(f"RESULT pkl_vs_ce_step_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
