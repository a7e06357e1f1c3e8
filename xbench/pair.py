"""``python -m xbench.pair student=llama3 teacher=[qwen3,phi4like]``: the tokenizer-pair audit.

A thin entry point: the code lives in :mod:`xbench.tokenpair.cli` (``run_pair``, ``main``).
"""

from __future__ import annotations

import sys

from xbench.tokenpair.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
