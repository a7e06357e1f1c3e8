"""Step time of a cross-tokenizer P-KL step vs a CE step on the same student, side by side.

The teacher forward is excluded (its logits are computed once, before timing), so the ratio
isolates what P-KL adds to a training step: alignment-indexed chunk distributions, the sparse
projection W^T p_S, the top-k KL, and learned-W updates. Steps alternate between the two
sessions so machine noise hits both alike.

    python -m benchmarks.train_step                       # mini vocab + real vocab, CPU-sized
    python -m benchmarks.train_step --toy                 # the 0.28M-parameter smoke student
    python -m benchmarks.train_step --device cuda --real  # Llama-3 x Qwen3 vocabularies, bf16

The default run measures two configurations in one process: the miniature world (4-layer
hidden-256 student; ``pkl_vs_ce_step_ratio``) and real vocabularies sized for a 2-core CPU (a
2-layer hidden-256 student with the real Llama-3 tokenizer and head, a Qwen3-vocabulary teacher,
the real Llama-3 x Qwen3 W, batch 2 x 128; ``pkl_vs_ce_step_ratio_real``). ``--real`` measures
only the real-vocabulary step with the 145M-parameter student at ``--batch`` x ``--seq-len``
and reports that figure under both names.

Ends with: ``RESULT pkl_vs_ce_step_ratio=... pkl_vs_ce_step_ratio_real=...``.
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

    from xbench.engine.loop import build_session, to_device

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


# Student/teacher shapes. "real_cpu" is sized for a 2-core CPU: a tiny transformer (the real
# vocabularies make the LM head and the losses the bulk of the step, as they are for a 1B student
# on a GPU); "real_gpu" is the 145M-parameter student of the H200 measurement.
ARCHS = {
    "mini": "{hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, "
    "intermediate_size: 768, max_position_embeddings: 512}",
    "real_cpu": "{hidden_size: 256, num_hidden_layers: 2, num_attention_heads: 4, "
    "intermediate_size: 768, max_position_embeddings: 512}",
    "real_gpu": "{hidden_size: 512, num_hidden_layers: 4, num_attention_heads: 8, "
    "intermediate_size: 1536, max_position_embeddings: 2048}",
}
REAL = ["student.tokenizer=llama3", "zoo.tiny_A.tokenizer=qwen3"]


def measure(
    name: str, overrides: list[str], device: str, reps: int, warmup: int
) -> tuple[float, dict[str, Any]]:
    """Median step time of a CE and a P-KL session on one fixed batch, steps interleaved."""
    sessions = {k: _session(cell, overrides) for k, cell in (("ce", "ce"), ("pkl", "pkl-A"))}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for rep in range(warmup + reps):
        # Alternate which method goes first, so a slow spell of the shared machine hits both.
        order = list(sessions.items()) if rep % 2 == 0 else list(sessions.items())[::-1]
        for k, (sess, micro) in order:
            _sync(device)
            t0 = time.perf_counter()
            sess.forward_backward(micro, with_stats=False)
            sess.optimizer_step()
            _sync(device)
            if rep >= warmup:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    sess, micro = sessions["pkl"]
    n_tok = int(micro[0]["attention_mask"].sum())
    info = {
        "params_M": sum(p.numel() for p in sess.student.parameters()) / 1e6,
        "tokens": n_tok,
        "V_S": sess.student.get_output_embeddings().weight.shape[0],
        "V_T": sess.objective.teachers[0].projection.meta["V_T"],
    }
    print(
        f"[{name}] student {info['params_M']:.2f}M params, tokens={n_tok}, V_S={info['V_S']}, "
        f"V_T={info['V_T']}, reps={reps} (median, teacher forward excluded)"
    )
    for k, v in med.items():
        print(f"  {k:4s} step {v * 1000:9.1f} ms   {n_tok / v:10.0f} tokens/s")
    ratio = med["pkl"] / med["ce"]
    print(f"  pkl/ce {ratio:.3f}", flush=True)
    return ratio, info


def main(argv: list[str] | None = None) -> tuple[float, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--real",
        action="store_true",
        help="only the real-vocabulary step, with the 145M-parameter student (GPU size)",
    )
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--real-batch", type=int, default=2, help="CPU real-vocabulary mode: batch")
    ap.add_argument("--real-seq-len", type=int, default=128, help="CPU real-vocabulary mode")
    ap.add_argument("--real-reps", type=int, default=5, help="CPU real-vocabulary mode: reps")
    ap.add_argument("--override", nargs="*", default=[], help="extra cell config overrides")
    ap.add_argument(
        "--toy",
        action="store_true",
        help="the 0.28M-parameter smoke student instead of the 4-layer, hidden-256 one",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    def base(batch: int, seq_len: int) -> list[str]:
        return [
            f"train.device={args.device}",
            "train.precision=bf16",
            f"data.seq_len={seq_len}",
            f"train.global_batch_size={batch}",
            f"train.micro_batch_size={batch}",
            "train.steps=1000",
            "world.n_train=400",
            *args.override,
        ]

    print(f"device={args.device} threads={args.threads}")
    if args.real:
        arch = ARCHS["real_gpu"]
        ov = [*base(args.batch, args.seq_len), *REAL, f"student.arch={arch}",
              f"zoo.tiny_A.arch={arch}"]  # fmt: skip
        ratio, _ = measure("real", ov, args.device, args.reps, args.warmup)
        ratio_real = ratio
    else:
        mini = [] if args.toy else [f"student.arch={ARCHS['mini']}"]
        ratio, _ = measure("mini", [*mini, *base(args.batch, args.seq_len)], args.device,
                           args.reps, args.warmup)  # fmt: skip
        arch = ARCHS["real_cpu"]
        ov = [*base(args.real_batch, args.real_seq_len), *REAL, f"student.arch={arch}",
              f"zoo.tiny_A.arch={arch}"]  # fmt: skip
        ratio_real, _ = measure("real", ov, args.device, args.real_reps, 1)
    if args.device.startswith("cuda"):
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"RESULT pkl_vs_ce_step_ratio={ratio:.3f} pkl_vs_ce_step_ratio_real={ratio_real:.3f}")
    return ratio, ratio_real


if __name__ == "__main__":
    main()
