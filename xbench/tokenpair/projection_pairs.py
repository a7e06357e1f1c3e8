"""Loss-side helpers for projection W: sparse W, H-KL's and GOLD's common token pairs.

Split out of ``xbench.tokenpair.projection``, which re-exports these names.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from xbench.tokenpair.projection_artifact import Projection

__all__ = ["exact_common_pairs", "relaxed_common_pairs", "to_sparse"]


def to_sparse(
    proj: Projection, V_T: int | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """W as a sparse CSR tensor ``(V_S, V_T)``; padding slots are dropped.

    Args:
        proj: The projection.
        V_T: Number of columns (teacher head size); default ``proj.meta["V_T"]``.
        weights: Optional ``(V_S, K)`` values to use instead of ``proj.weights`` (e.g. a learnable
            parameter; gradients flow through it). The pattern is always ``proj.slot_mask``.
    """
    n_cols = int(proj.meta["V_T"] if V_T is None else V_T)
    if proj.indices.numel() and int(proj.indices.max()) >= n_cols:
        raise ValueError(
            f"V_T={n_cols} is smaller than the largest teacher id in W "
            f"({int(proj.indices.max())}); pass the teacher's head size."
        )
    values = proj.weights if weights is None else weights
    if values.shape != proj.weights.shape:
        raise ValueError(
            f"weights has shape {tuple(values.shape)}; it must be {tuple(proj.weights.shape)}."
        )
    mask = proj.slot_mask
    # CSR wants column ids ascending within a row; slots are stored by weight, so reorder.
    order = torch.argsort(torch.where(mask, proj.indices, n_cols), dim=1, stable=True)
    mask = mask.gather(1, order)
    cols = proj.indices.gather(1, order)[mask]
    vals = values.gather(1, order)[mask]
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(mask.sum(dim=1), dim=0)
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # Valid by construction (crow from counts, cols sorted per row): skip the O(nnz) check.
        return torch.sparse_csr_tensor(
            crow, cols, vals, size=(mask.shape[0], n_cols), check_invariants=False
        )


def relaxed_common_pairs(
    proj: Projection, threshold: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """H-KL's relaxed common set: student rows whose largest W weight is >= ``threshold``.

    Each such row is paired with the teacher token holding that weight. When several rows pick
    the same teacher token, the highest weight wins, then the lowest student id, so the pairs are
    1-to-1.

    Returns:
        ``(student_ids, teacher_ids)``, int64, sorted by student id.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r}: set it in (0, 1].")
    top_w, slot = proj.weights.max(dim=1)
    top_t = proj.indices.gather(1, slot[:, None]).squeeze(1)
    student = torch.nonzero(top_w >= threshold).squeeze(1)
    w, teacher = top_w[student].numpy(), top_t[student].numpy()
    order = np.lexsort((student.numpy(), -w.astype(np.float64), teacher))
    teacher_sorted = teacher[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = teacher_sorted[1:] != teacher_sorted[:-1]
    winners = np.sort(order[first])
    return student[torch.from_numpy(winners)], torch.from_numpy(teacher[winners]).long()


def exact_common_pairs(
    student_tok: Any,
    teacher_tok: Any,
    semantics: Literal["canonical", "trl"] = "canonical",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GOLD's 1-to-1 common vocabulary.

    Args:
        student_tok: Student tokenizer.
        teacher_tok: Teacher tokenizer.
        semantics: ``"trl"`` = raw ``get_vocab()`` string equality as TRL's GOLD does (so Llama's
            ``Ġthe`` and a SentencePiece ``▁the`` never match); ``"canonical"`` = equality of
            ``canonical_vocab`` strings (space/newline markers unified, specials by role). A
            canonical string shared by several ids on one side pairs its lowest id.

    Returns:
        ``(student_ids, teacher_ids)``, int64, sorted by student id.
    """
    if semantics == "trl":
        sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
        pairs = sorted((i, tv[tok]) for tok, i in sv.items() if tok in tv)
    elif semantics == "canonical":
        from xbench.tokenpair.canon import canonical_vocab

        teacher: dict[str, int] = {}
        for j, c in enumerate(canonical_vocab(teacher_tok)):
            if c:
                teacher.setdefault(c, j)
        seen: set[str] = set()
        pairs = []
        for i, c in enumerate(canonical_vocab(student_tok)):
            if c and c in teacher and c not in seen:
                seen.add(c)
                pairs.append((i, teacher[c]))
    else:
        raise ValueError(f"semantics={semantics!r}: use 'canonical' or 'trl'.")
    arr = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    return arr[:, 0].contiguous(), arr[:, 1].contiguous()
