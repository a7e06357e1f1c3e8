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
  ``pair_audit``: ``run_pair``, the audit of one student against several teachers, written to
  disk (``python -m xbench.pair``, the Hydra entry point in ``xbench/pair.py``, runs it).

Imports flow one way inside the package (canon, types <- align_*, projection_* <- audit <-
pair_audit). Outside it, the modules import numpy, torch, tokenizers, safetensors, the standard
library, ``xbench.assets`` (tokenizers, GSM8K, the cache root), ``xbench.io`` (atomic writes) and
``xbench.__version__``; ``align_check``'s fuzz strategy also imports hypothesis. Nothing here
imports the losses, the engine, the configs or Hydra.
"""
