"""Benchmark: build the projection W for real Llama-3 (student) x Qwen3 (teacher).

    python benchmarks/projection.py [--student llama3] [--teacher qwen3] [--reverse-pass]

Measures the wall time of ``build_projection`` alone (tokenizers are loaded first, untimed) and
the process's peak resident memory (``ru_maxrss``, which includes the loaded tokenizers), and,
with ``--tracemalloc``, the peak of traced allocations during the build (slows the build).
Targets on a 2-core CPU machine: <= 120 s and <= 3 GB. Ends with exactly one line:
``RESULT build_s=... peak_mb=... rows=... nnz=...``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="llama3")
    parser.add_argument("--teacher", default="qwen3")
    parser.add_argument("--reverse-pass", action="store_true")
    # tracemalloc slows allocation-heavy Python several-fold, so it is opt-in and off for timing.
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)

    from xbench.assets import load_tokenizer
    from xbench.tokenpair.projection import ProjectionConfig, build_projection

    student, teacher = load_tokenizer(args.student), load_tokenizer(args.teacher)
    if args.tracemalloc:
        tracemalloc.start()
    start = time.perf_counter()
    proj = build_projection(student, teacher, ProjectionConfig(reverse_pass=args.reverse_pass))
    build_s = time.perf_counter() - start
    if args.tracemalloc:
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"tracemalloc peak during build: {traced_peak / 2**20:.0f} MB", file=sys.stderr)
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    stats = proj.meta["stats"]
    print(f"{args.student} x {args.teacher}: {stats}", file=sys.stderr)
    print(
        f"RESULT build_s={build_s:.2f} peak_mb={peak_mb:.0f} "
        f"rows={proj.indices.shape[0]} nnz={stats['nnz']}"
    )


if __name__ == "__main__":
    main()
