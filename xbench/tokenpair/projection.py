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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbench.tokenpair.projection_io import (
    FORMAT,
    _content_hash,
    load_projection,
    save_projection,
    tokenizer_fingerprint,
)
from xbench.tokenpair.projection_pairs import exact_common_pairs, relaxed_common_pairs, to_sparse
from xbench.tokenpair.projection_retok import _retokenize, _side, _top_k, _triples

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


@dataclass
class Projection:
    """Sparse W in fixed-rank form (see ``docs/contracts.md``).

    Attributes:
        indices: ``(V_S, K)`` int64 teacher ids; padding slots hold 0.
        weights: ``(V_S, K)`` float32, sorted descending per row; a non-empty row sums to 1,
            padding slots and empty rows hold 0.
        meta: ``V_S`` / ``V_T`` (model head sizes), ``K``, tokenizer fingerprints and sizes,
            rules, stats, xbench version, ``content_hash``.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """sha256 over the tensors' canonical bytes and the meta fields that define W."""
        return _content_hash(self.indices.numpy(), self.weights.numpy(), self.meta)

    @property
    def slot_mask(self) -> torch.Tensor:
        """``(V_S, K)`` bool: slots that hold an entry; the fixed sparsity pattern of W."""
        return self.weights > 0

    def learnable_values(self) -> torch.Tensor:
        """Return a fresh float32 ``(V_S, K)`` copy of the weights, e.g. for ``nn.Parameter``.

        P-KL learns the non-zero values with the student while the pattern (``indices`` and
        ``slot_mask``) stays fixed; pass the parameter to ``to_sparse(..., weights=param)``.
        """
        return self.weights.detach().clone().float().contiguous()

    def resized(self, student_head_size: int, teacher_head_size: int) -> Projection:
        """Return W for LM heads padded beyond the tokenizers (extra rows map nowhere).

        Args:
            student_head_size: Rows of the student's LM head (>= student tokenizer size).
            teacher_head_size: Rows of the teacher's LM head (>= teacher tokenizer size).

        Raises:
            ValueError: A head is smaller than its tokenizer.
        """
        for side, size in (("student", student_head_size), ("teacher", teacher_head_size)):
            vocab = self.meta[side]["vocab_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < vocab:
                raise ValueError(
                    f"{side}_head_size={size!r} is smaller than the {side} tokenizer "
                    f"({vocab} tokens): pass the model's real output-embedding size, or the "
                    f"tokenizer that belongs to the {side} model."
                )
        extra = student_head_size - self.indices.shape[0]
        if extra < 0:  # shrinking back to a smaller (still >= vocab) padded head
            indices, weights = self.indices[:student_head_size], self.weights[:student_head_size]
        else:
            k = self.indices.shape[1]
            indices = torch.cat([self.indices, torch.zeros(extra, k, dtype=torch.int64)])
            weights = torch.cat([self.weights, torch.zeros(extra, k, dtype=torch.float32)])
        meta = {**self.meta, "V_S": student_head_size, "V_T": teacher_head_size}
        padded = student_head_size - self.meta["student"]["vocab_size"]
        meta["stats"] = {**meta["stats"], "padded_head_rows": padded}
        proj = Projection(indices.contiguous(), weights.contiguous(), meta)
        proj.meta["content_hash"] = proj.content_hash
        return proj

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact directory ``path`` atomically (safetensors + ``meta.json``).

        The directory is assembled under a temporary name and renamed into place, so readers
        see either nothing, the old artifact, or the complete new one.
        """
        return save_projection(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        student_tok: Any = None,
        teacher_tok: Any = None,
        student_head_size: int | None = None,
        teacher_head_size: int | None = None,
    ) -> Projection:
        """Read an artifact, check its integrity and, when given, the tokenizers and heads.

        Args:
            path: Artifact directory written by ``save``.
            student_tok: If given, its fingerprint must match the one W was built from.
            teacher_tok: Same for the teacher.
            student_head_size: Student LM-head rows; padded heads get empty extra rows.
            teacher_head_size: Teacher LM-head rows; must be >= the teacher tokenizer size.

        Raises:
            FileNotFoundError: The artifact is missing.
            ValueError: The artifact is corrupt, or a tokenizer / head size does not fit.
        """
        return load_projection(
            cls,
            path,
            student_tok=student_tok,
            teacher_tok=teacher_tok,
            student_head_size=student_head_size,
            teacher_head_size=teacher_head_size,
        )


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
    s, t = _side(student_tok), _side(teacher_tok)

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
    forward = _retokenize(s, t, skip=is_exact)
    r, c, v = _triples(forward, piece_w)
    rows.append(r)
    cols.append(c)
    vals.append(v)
    n_reverse = 0
    if cfg.reverse_pass:
        backward = _retokenize(t, s, skip=np.zeros(t.size, dtype=bool))
        tc, sr, v = _triples(backward, piece_w)  # (teacher source, student piece, weight)
        keep = ~(is_exact[sr] | s.special[sr])  # exact rows hold nothing else
        rows.append(sr[keep])
        cols.append(tc[keep])
        vals.append(v[keep])
        n_reverse = int(keep.sum())
    indices, weights = _top_k(
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
