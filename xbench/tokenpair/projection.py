"""Projection matrix W: maps student-token probability mass onto teacher tokens.

W has one row per student token and at most K ("projection rank") non-zero teacher columns per
row, stored as two dense ``(V_S, K)`` tensors (indices, weights); it is never materialized as a
``V_S x V_T`` matrix (128k x 152k fp32 would be ~78 GB). Rules (X-Token paper, "Projection W"):

1. Canonical exact match (``canonical_vocab`` strings equal): ``W[s, t] = 1`` and the row holds
   nothing else. Special tokens are canonicalized to ``<|role:NAME|>`` so this step also maps
   them by role (BOS to BOS, EOS to EOS, ...).
2. Otherwise the student token's text is re-tokenized by the teacher (no special tokens added)
   into ``t_0 .. t_{l-1}`` and ``W[s, t_i] += first_weight * decay**i`` for ``i < max_pieces``.
3. Optional reverse pass: every teacher token's text is re-tokenized by the student into
   ``s_0 .. s_{m-1}`` and ``W[s_i, t] += first_weight * decay**i``; exact and special rows skip it.
4. Keep the K largest entries per row (ties: lower teacher id first), renormalize to sum 1.

Decisions where the paper is silent, recorded in ``meta["rules"]``:

- A teacher id repeated within one row's pieces ("000" -> "0","0","0") gets the *sum* of its
  decayed weights, so W is the sum of the rules' contributions, like the reverse pass's "add".
- The reverse pass is off by default: the paper lists it as optional and its worked example and
  K = 4 are forward-only; it is available as ``reverse_pass=True``.
- Empty rows (all weights 0, indices 0) are student tokens that map nowhere: special tokens with
  no teacher token of the same role (Llama-3's reserved tokens, BOS against a teacher without
  one), tokens whose text is empty, tokens the teacher cannot spell (bytes missing from its
  vocabulary: SmolLM2 lacks 0xC0 and some control bytes), and padded LM-head rows. Their
  student mass leaves P-KL's projected distribution; ``meta["stats"]["empty_rows"]`` counts them.
- Byte-level tokens that are a fragment of a UTF-8 character (not decodable on their own) are
  re-tokenized on raw bytes by the teacher's byte-level BPE model, not via the text "\\ufffd"
  (which would map them all onto the replacement character's tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbench.tokenpair.projection_artifact import FORMAT, Projection, tokenizer_fingerprint
from xbench.tokenpair.projection_pairs import exact_common_pairs, relaxed_common_pairs, to_sparse
from xbench.tokenpair.projection_retok import piece_triples, retokenize, top_k, vocab_side

__all__ = [
    "Projection",
    "ProjectionConfig",
    "build_projection",
    "exact_common_pairs",
    "load_or_build",
    "relaxed_common_pairs",
    "to_sparse",
    "tokenizer_fingerprint",
]


log = logging.getLogger("xbench.tokenpair.projection")


@dataclass(frozen=True)
class ProjectionConfig:
    """String rules for building W; defaults are the paper's.

    Attributes:
        rank: K, the number of teacher tokens kept per student row ("projection rank").
        max_pieces: At most this many teacher pieces of a re-tokenized student token get weight.
        first_weight: Weight of the first piece (0.9 in the paper).
        decay: Factor between consecutive pieces (0.1): piece i gets first_weight * decay**i.
        reverse_pass: Also add teacher-token re-tokenizations into student rows (paper: optional).
    """

    rank: int = 4
    max_pieces: int = 4
    first_weight: float = 0.9
    decay: float = 0.1
    reverse_pass: bool = False

    def __post_init__(self) -> None:
        for name in ("rank", "max_pieces"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ProjectionConfig.{name}={value!r}: set it to an integer >= 1.")
        if not (isinstance(self.first_weight, int | float) and self.first_weight > 0):
            raise ValueError(
                f"ProjectionConfig.first_weight={self.first_weight!r}: set it to a number > 0."
            )
        if not (isinstance(self.decay, int | float) and 0 < self.decay <= 1):
            raise ValueError(f"ProjectionConfig.decay={self.decay!r}: set it in (0, 1].")
        if not isinstance(self.reverse_pass, bool):
            raise ValueError(
                f"ProjectionConfig.reverse_pass={self.reverse_pass!r}: set it to true or false."
            )

    def rules(self) -> dict[str, Any]:
        """Return the full rule set (config plus fixed conventions) recorded in the artifact."""
        return {
            **dataclasses.asdict(self),
            "exact_match": "canonical_vocab",
            "duplicate_pieces": "sum",
            "special_tokens": "role (canonical <|role:NAME|>), else empty row",
            "partial_utf8": "raw bytes through the other side's byte-level BPE",
            "topk_ties": "lower teacher id first",
        }


# --------------------------------------------------------------------------- builder


def build_projection(
    student_tok: Any,
    teacher_tok: Any,
    cfg: ProjectionConfig | None = None,
) -> Projection:
    """Build W from string rules (module docstring) for a student/teacher tokenizer pair.

    ``V_S`` / ``V_T`` are the tokenizer sizes; use ``Projection.resized`` (or ``load`` /
    ``load_or_build`` with head sizes) for padded LM heads.

    Args:
        student_tok: Student fast tokenizer (rows of W).
        teacher_tok: Teacher fast tokenizer (columns of W).
        cfg: Rules; ``ProjectionConfig()`` (paper defaults) when None.

    Returns:
        The projection, deterministic: same tokenizers and rules give bit-identical tensors.
    """
    cfg = ProjectionConfig() if cfg is None else cfg
    if not isinstance(cfg, ProjectionConfig):
        raise ValueError(f"cfg is a {type(cfg).__name__}: pass a ProjectionConfig.")
    s, t = vocab_side(student_tok), vocab_side(teacher_tok)

    # Rule 1: canonical exact match (first teacher id wins if two share a canonical string).
    teacher_by_canon: dict[str, int] = {}
    for j, c in enumerate(t.canon):
        if c:
            teacher_by_canon.setdefault(c, j)
    exact = np.full(s.size, -1, dtype=np.int64)
    for i, c in enumerate(s.canon):
        exact[i] = teacher_by_canon.get(c, -1) if c else -1
    is_exact = exact >= 0

    # Rule 2 (+3): decayed weights of re-tokenization pieces, as COO triples.
    piece_w = cfg.first_weight * cfg.decay ** np.arange(cfg.max_pieces, dtype=np.float64)
    rows, cols, vals = [np.flatnonzero(is_exact)], [exact[is_exact]], [np.ones(is_exact.sum())]
    forward = retokenize(s, t, skip=is_exact)
    r, c, v = piece_triples(forward, piece_w)
    rows.append(r)
    cols.append(c)
    vals.append(v)
    n_reverse = 0
    if cfg.reverse_pass:
        backward = retokenize(t, s, skip=np.zeros(t.size, dtype=bool))
        tc, sr, v = piece_triples(backward, piece_w)  # (teacher source, student piece, weight)
        keep = ~(is_exact[sr] | s.special[sr])  # exact rows hold nothing else
        rows.append(sr[keep])
        cols.append(tc[keep])
        vals.append(v[keep])
        n_reverse = int(keep.sum())
    indices, weights = top_k(
        np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), s.size, t.size, cfg.rank
    )

    n_pieces = np.array([len(p) for p in forward])
    empty = weights[:, 0] == 0
    meta: dict[str, Any] = {
        "format": FORMAT,
        "V_S": s.size,
        "V_T": t.size,
        "K": cfg.rank,
        "student": {"fingerprint": tokenizer_fingerprint(student_tok), "vocab_size": s.size},
        "teacher": {"fingerprint": tokenizer_fingerprint(teacher_tok), "vocab_size": t.size},
        "rules": cfg.rules(),
        "stats": {
            "exact_rows": int(is_exact.sum()),
            "special_rows_by_role": int((is_exact & s.special).sum()),
            "retokenized_rows": int(((n_pieces > 0) & ~is_exact).sum()),
            "rows_over_max_pieces": int((n_pieces > cfg.max_pieces).sum()),
            "reverse_entries": n_reverse,
            "empty_rows": int(empty.sum()),
            "empty_special_rows": int((empty & s.special).sum()),
            "padded_head_rows": 0,
            "nnz": int((weights > 0).sum()),
        },
        "xbench_version": _xbench_version(),
    }
    proj = Projection(torch.from_numpy(indices), torch.from_numpy(weights), meta)
    proj.meta["content_hash"] = proj.content_hash
    return proj


def _xbench_version() -> str:
    # The editable install can expose ``xbench`` as a namespace package (no __version__) when
    # run from outside the repo, so fall back to the installed distribution's metadata.
    import importlib.metadata

    import xbench

    version = getattr(xbench, "__version__", None)
    return version or importlib.metadata.version("xbench")


# --------------------------------------------------------------------------- cache


def load_or_build(
    student_tok: Any,
    teacher_tok: Any,
    cfg: ProjectionConfig | None = None,
    *,
    student_head_size: int | None = None,
    teacher_head_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Projection:
    """Return W from ``<cache>/projections/<key>``, building and caching it on a miss.

    The key hashes the inputs (both tokenizer fingerprints, the rules, the artifact format), so
    it is known before building; the artifact inside carries its content hash, checked on load.

    Args:
        student_tok: Student fast tokenizer.
        teacher_tok: Teacher fast tokenizer.
        cfg: Rules (paper defaults when None).
        student_head_size: Student LM-head rows (default: tokenizer size).
        teacher_head_size: Teacher LM-head rows (default: tokenizer size).
        cache_dir: Cache root; default ``$XBENCH_CACHE`` or ``~/.cache/xbench``.
    """
    from xbench.assets import cache_dir as default_cache

    cfg = ProjectionConfig() if cfg is None else cfg
    key_src = {
        "format": FORMAT,
        "student": tokenizer_fingerprint(student_tok),
        "teacher": tokenizer_fingerprint(teacher_tok),
        "rules": cfg.rules(),
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir or default_cache()) / "projections" / key
    try:
        proj = Projection.load(path, student_tok=student_tok, teacher_tok=teacher_tok)
    except FileNotFoundError:  # a miss: build and cache
        proj = build_projection(student_tok, teacher_tok, cfg)
        proj.save(path)
    except ValueError as err:  # a corrupt entry (size, hash or format check): rebuild over it
        log.warning("cached W at %s failed verification, rebuilding it: %s", path, err)
        proj = build_projection(student_tok, teacher_tok, cfg)
        proj.save(path)
    return proj.resized(
        proj.meta["V_S"] if student_head_size is None else student_head_size,
        proj.meta["V_T"] if teacher_head_size is None else teacher_head_size,
    )
