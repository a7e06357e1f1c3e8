"""ULD: sorted-probability L1 between chunk distributions (Boizard et al.; GOLD's uncommon term)."""

from __future__ import annotations

import torch
from torch import Tensor

from xbench.losses.base import LossOutput
from xbench.losses.chunks import cross_tokenizer_sums
from xbench.losses.hybrid_ops import HybridSets, hybrid_sums, uses_kernel
from xbench.losses.sorting import sorted_l1
from xbench.losses.view import SHARED_READS, ChunkOptions, ChunkView

__all__ = ["uld_loss"]


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    *,
    options: ChunkOptions = ChunkOptions(),
) -> LossOutput:
    """Universal Logit Distillation on aligned chunks:
        f * sum_{valid chunks c} sum_r | sort_desc(q^S_c)_r - sort_desc(q^T_c)_r |,
    q^S_c, q^T_c the chunk distributions (:mod:`xbench.losses.chunks`, softmax at temperature T),
    the smaller vocabulary zero-padded to the larger, f = T^2 under ``options.t2`` else 1 (xbench
    and TRL: no T^2).

    Args:
        student_logits: (B, Ts, V_S); teacher_logits: (B, Tt, V_T).
        view: the batch's chunks (and ids, for ``chain``).
        options: reads ``truncate`` (compare the top ranks only, :func:`sorted_l1`), ``t2``,
            ``fast`` (the closed-form kernel ``hybrid_ops.hybrid_sums`` with no pairs, same value
            and gradients, unless the teacher logits require grad; it always differentiates
            slice by slice, whatever ``use_checkpoint``) and the shared ``temperature``,
            ``chunk_method``, ``chunk_size``, ``use_checkpoint``. ULD has no divergence:
            ``beta`` is refused.

    Returns:
        LossOutput(total = sum over valid chunks, count = valid chunks, components={"l1": total}).
        In [0, 2] per chunk for normalized distributions; 0 for identical sorted profiles.
    """
    options.check("uld", SHARED_READS | {"truncate", "t2"})
    if uses_kernel(options, teacher_logits):
        no_pairs = torch.zeros(0, dtype=torch.long, device=student_logits.device)
        sets = HybridSets.build(
            (no_pairs, no_pairs), student_logits.shape[-1], teacher_logits.shape[-1], (0.0, 1.0)
        )
        sums, n = hybrid_sums(student_logits, teacher_logits, view, sets, options=options)
        total = sums["loss"] if sums else student_logits.sum() * 0.0
        return LossOutput(
            total, torch.tensor(n, device=student_logits.device), {"l1": total.detach()}
        )

    def term(lq_s: Tensor, lq_t: Tensor) -> dict[str, Tensor]:
        l1 = sorted_l1(lq_s.exp(), lq_t.exp(), options.truncate).sum()
        return {"l1": l1 * options.factor if options.t2 else l1}

    sums, n = cross_tokenizer_sums(student_logits, teacher_logits, view, term, options=options)
    total = sums["l1"] if sums else student_logits.sum() * 0.0
    count = torch.tensor(n, device=student_logits.device)
    return LossOutput(total, count, {"l1": total.detach()})
