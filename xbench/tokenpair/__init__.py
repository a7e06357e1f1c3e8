"""The cross-tokenizer core: how a student and a teacher tokenizer see the same text. No training
code; import the modules directly (this file imports nothing).

- ``canon``: one canonical string per token across families (space/newline markers, byte
  fallback, special tokens by role), true bytes per id.
- ``align``: ``TokenizerPairAligner`` / ``align``, chunk ids for a sequence pair; built on
  ``align_offset`` (vectorized offset method, ``align_offset_slow`` its per-sequence definition),
  ``align_dp`` (the paper's DP), ``align_collate`` (padded batches) and ``types`` (the alignment
  dataclasses); ``align_check`` cross-checks the DP against the offsets (fuzz tests, benchmark).
- ``projection``: W from string rules (``build_projection``) and its cache (``load_or_build``);
  built on ``projection_artifact`` (the ``Projection`` dataclass, content hash, save/load),
  ``projection_retok`` (re-tokenization, top-K) and ``projection_pairs`` (sparse W, the common
  token pairs H-KL and GOLD use).
- ``audit``: the pair report (Table 8, alignment statistics, loss recommendation);
  ``cli``: ``python -m xbench.pair``, which runs it for one student and several teachers.

Imports flow one way inside the package (canon, types <- align_*, projection_* <- audit <- cli).
The library modules import numpy, torch, tokenizers, safetensors, ``xbench.assets`` (cache root),
``xbench.__version__`` and each other (``align_check``'s fuzz strategy also imports hypothesis);
``cli`` alone adds Hydra/OmegaConf, ``xbench.config`` and ``xbench.io``.
"""
