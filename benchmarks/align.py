"""Benchmark cross-tokenizer aligners on the GSM8K test set (Llama-3 student, Qwen3 teacher).

Measures, side by side in one run and excluding tokenization (every aligner gets the ids / offsets
of one ``encode`` call, made before timing): the offset aligner (batched, numpy; the timed call
returns one ``SeqAlignment`` per sequence), the paper's DP aligner (on the first ``--dp-subset``
sequences, it is slow), and TRL's GOLD aligner (``ULDLoss._align_by_byte_offsets``, used by
GOLDTrainer, from trl 1.16, imported, fed the same offsets as Python lists, its native input).
Timing policy, the same for all three: one untimed warm-up call, then the best (minimum) wall time
of ``--reps`` calls, each over the aligner's whole set. Also: the offset aligner's flat batch API
(no per-sequence objects) and its one-sequence-at-a-time entry point (as ``engine.data`` calls
it), the batched fast-tokenizer throughput, the aligner's cost as a share of tokenizing both
sides, and the share of 1:1 chunks.

Usage:
    python -m benchmarks.align [--dp-subset 100] [--reps 5]

The last line printed is ``RESULT offset_seq_per_s=... dp_seq_per_s=... trl_seq_per_s=...
speedup=... speedup_vs_trl=... one_to_one_share=...`` (speedup = offset / dp). The machine may be
shared and noisy: ratios measured in one run are what count.
"""

from __future__ import annotations

import argparse
import os
import time

# One core for everything: tokenizers' Rayon pool and torch intra-op threads.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from xbench.assets import load_gsm8k_test, shared_tokenizer
from xbench.tokenpair.align import TokenizerPairAligner


def _best_time(fn, reps: int) -> float:
    """Minimum wall time of ``reps`` calls after one untimed warm-up (the least disturbed by
    other processes)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(dp_subset: int = 100, reps: int = 5) -> dict[str, float]:
    """Run the benchmark and return the figures (also printed)."""
    torch.set_num_threads(1)
    # GOLD's extended-ULD path groups tokens with this static method of its ULDLoss.
    from trl.experimental.gold.gold_trainer import ULDLoss

    trl_align = ULDLoss._align_by_byte_offsets
    rows = load_gsm8k_test()
    texts = [r["question"] + " " + r["answer"] for r in rows]
    aligner = TokenizerPairAligner(shared_tokenizer("llama3"), shared_tokenizer("qwen3"))
    n = len(texts)

    tok_s = _best_time(lambda: aligner.encode(texts), max(1, reps // 2))
    si, ti, so, to = aligner.encode(texts)
    n_tokens = sum(len(x) for x in si) + sum(len(x) for x in ti)

    off_s = _best_time(lambda: aligner.align_batch(si, ti, so, to, texts), reps)
    alignments = aligner.align_batch(si, ti, so, to, texts)
    flat_s = _best_time(lambda: aligner.align_batch_flat(si, ti, so, to, texts), reps)
    single_s = _best_time(
        lambda: [aligner.align(si[i], ti[i], so[i], to[i], texts=texts[i]) for i in range(n)],
        max(1, reps // 2),
    )

    so_list = [x.tolist() for x in so]
    to_list = [x.tolist() for x in to]
    trl_s = _best_time(
        lambda: [trl_align(a, b) for a, b in zip(so_list, to_list, strict=True)], reps
    )

    k = min(dp_subset, n)
    dp_s = _best_time(lambda: [aligner.align_dp(si[i], ti[i]) for i in range(k)], reps)
    dp_al = [aligner.align_dp(si[i], ti[i]) for i in range(k)]

    chunks = sum(a.num_chunks for a in alignments)
    one_to_one = sum(int(a.one_to_one.sum()) for a in alignments)
    valid = sum(int(a.valid.sum()) for a in alignments)
    dp_chunks = sum(a.num_chunks for a in dp_al)
    dp_oo = sum(int((a.one_to_one & a.valid).sum()) for a in dp_al)
    dp_valid = sum(int(a.valid.sum()) for a in dp_al)

    fig = {
        "offset_seq_per_s": n / off_s,
        "offset_flat_seq_per_s": n / flat_s,
        "offset_single_seq_per_s": n / single_s,
        "dp_seq_per_s": k / dp_s,
        "trl_seq_per_s": n / trl_s,
        "tokenize_seq_per_s": n / tok_s,
        "tokenize_tokens_per_s": n_tokens / tok_s,
        "aligner_pct_of_tokenize": 100.0 * off_s / tok_s,
        "one_to_one_share": one_to_one / chunks,
    }
    fig["speedup"] = fig["offset_seq_per_s"] / fig["dp_seq_per_s"]
    fig["speedup_vs_trl"] = fig["offset_seq_per_s"] / fig["trl_seq_per_s"]

    print(f"GSM8K test: {n} sequences (question + ' ' + answer), Llama-3 student / Qwen3 teacher")
    print(
        f"  tokens: Llama-3 {sum(map(len, si)) / n:.1f}/seq (incl. BOS), Qwen3 "
        f"{sum(map(len, ti)) / n:.1f}/seq"
    )
    print(
        f"  tokenization (batched fast tokenizers, both sides, 1 thread): "
        f"{fig['tokenize_seq_per_s']:.0f} seq/s, {fig['tokenize_tokens_per_s']:.0f} tokens/s"
    )
    print(
        f"  offset aligner (all {n}, best of {reps}): {fig['offset_seq_per_s']:.0f} seq/s = "
        f"{fig['aligner_pct_of_tokenize']:.1f}% of tokenizing both sides"
    )
    print(
        f"  offset aligner, flat API (align_batch_flat, no per-sequence objects, best of {reps}): "
        f"{fig['offset_flat_seq_per_s']:.0f} seq/s; one sequence per call (align, as "
        f"xbench.engine.data does, best of {max(1, reps // 2)}): "
        f"{fig['offset_single_seq_per_s']:.0f} seq/s"
    )
    print(
        f"  TRL GOLD ULDLoss._align_by_byte_offsets (all {n}, best of {reps}, inputs "
        f"pre-converted to lists): {fig['trl_seq_per_s']:.0f} seq/s"
    )
    print(
        f"  DP aligner (first {k} sequences only, for time; best of {reps}): "
        f"{fig['dp_seq_per_s']:.1f} seq/s"
    )
    print(
        f"  offset chunks: {chunks} ({chunks / n:.1f}/seq), "
        f"1:1 share {fig['one_to_one_share']:.3f}, valid share {valid / chunks:.3f}"
    )
    print(
        f"  DP chunks on the subset: {dp_chunks}, exact 1:1 share {dp_oo / max(dp_chunks, 1):.3f}, "
        f"valid share {dp_valid / max(dp_chunks, 1):.3f}"
    )
    print(f"  speedup offset/DP {fig['speedup']:.0f}x, offset/TRL {fig['speedup_vs_trl']:.1f}x")
    print(
        "RESULT "
        + " ".join(
            f"{key}={fig[key]:.4g}"
            for key in (
                "offset_seq_per_s",
                "dp_seq_per_s",
                "trl_seq_per_s",
                "speedup",
                "speedup_vs_trl",
                "one_to_one_share",
            )
        )
    )
    return fig


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dp-subset", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    run(dp_subset=args.dp_subset, reps=args.reps)


if __name__ == "__main__":
    main()
