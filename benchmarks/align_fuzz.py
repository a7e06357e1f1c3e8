"""Fuzz the DP aligner against the offset aligner with Hypothesis (Llama-3 vs four teachers).

For each teacher (Qwen3, the o200k family ``phi4like``, Gemma-3, SmolLM2) and each special-token
mode of both post-processors (none, BOS, EOS, BOS+EOS), Hypothesis generates texts that mix
special-token strings of every family, non-NFC sequences, emoji, CJK and arbitrary Unicode
(:func:`xbench.tokenpair.align_check.mixed_texts`); every text is aligned both ways and checked
with :func:`~xbench.tokenpair.align_check.check_dp` (position errors, dropped text tokens,
disagreements on exact 1:1 pairs, and the offset aligner's exact pairs the DP misses).

Usage:
    python -m benchmarks.align_fuzz [--texts 10000] [--teachers qwen3,phi4like,gemma3,smollm2]

``--texts`` is per pair, split evenly over the four modes. The last line printed is
``RESULT texts=... position_errors=... dropped_tokens=... disagreements=... missed=...
seconds=...`` summed over the pairs; the script exits non-zero when any error count is not zero.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from xbench.assets import load_tokenizer
from xbench.tokenpair.align import TokenizerPairAligner
from xbench.tokenpair.align_check import (
    SPECIAL_MODES,
    DpCheck,
    check_dp,
    mixed_texts,
    set_special_mode,
    spellable,
)


def fuzz_pair(teacher: str, n_texts: int, seed: int = 0) -> tuple[DpCheck, list[str]]:
    """Fuzz Llama-3 vs ``teacher`` on ``n_texts`` texts over the four modes.

    Returns:
        The summed counts and up to 10 texts (prefixed by their mode) with errors.
    """
    s_tok, t_tok = load_tokenizer("llama3"), load_tokenizer(teacher)  # private copies: mutated
    ok_s, ok_t = spellable(s_tok), spellable(t_tok)
    checks = [f for f in (ok_s, ok_t) if f is not None]
    ok = (lambda ch: all(f(ch) for f in checks)) if checks else None
    total, bad = DpCheck(), []
    per_mode = -(-n_texts // len(SPECIAL_MODES))
    for k, mode in enumerate(SPECIAL_MODES):
        set_special_mode(s_tok, mode)
        set_special_mode(t_tok, mode)
        aligner = TokenizerPairAligner(s_tok, t_tok)

        # Hypothesis only generates here (no shrinking, no example database): the counts are the
        # result, and a failing text is recorded as it was generated.
        @settings(
            max_examples=per_mode,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis_seed(seed + k)  # reproducible runs
        @given(mixed_texts(ok))
        def one(text: str) -> None:
            got = check_dp(aligner, text)  # noqa: B023 (called below, in this iteration)
            nonlocal total
            total += got
            if got.errors and len(bad) < 10:
                bad.append(f"{mode}: {text!r}")  # noqa: B023

        one()
    return total, bad


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz and print per-pair and summed counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=10_000, help="texts per pair (>= 4)")
    ap.add_argument("--teachers", default="qwen3,phi4like,gemma3,smollm2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.texts < len(SPECIAL_MODES):
        ap.error(f"--texts={args.texts}: give at least {len(SPECIAL_MODES)} (one per mode).")
    grand, start = DpCheck(), time.perf_counter()
    for teacher in args.teachers.split(","):
        t0 = time.perf_counter()
        got, bad = fuzz_pair(teacher, args.texts, args.seed)
        grand += got
        print(
            f"llama3 x {teacher}: texts={got.texts} position_errors={got.position_errors} "
            f"dropped_tokens={got.dropped_tokens} disagreements={got.disagreements} "
            f"offset_exact_pairs={got.offset_exact_pairs} missed={got.missed_exact_pairs} "
            f"seconds={time.perf_counter() - t0:.1f}",
            flush=True,
        )
        for line in bad:
            print("  error text", line)
    print(
        f"RESULT texts={grand.texts} position_errors={grand.position_errors} "
        f"dropped_tokens={grand.dropped_tokens} disagreements={grand.disagreements} "
        f"offset_exact_pairs={grand.offset_exact_pairs} missed={grand.missed_exact_pairs} "
        f"seconds={time.perf_counter() - start:.1f}"
    )
    return 1 if grand.errors else 0


if __name__ == "__main__":
    sys.exit(main())
