"""H-KL: GOLD's hybrid form on the relaxed, W-derived common set (X-Token)."""

from __future__ import annotations

from torch import Tensor

from xbench.losses.base import LossOutput, register
from xbench.losses.chunks import ChunkMethod
from xbench.losses.gold import hybrid_loss

__all__ = ["hkl_loss"]


@register("hkl")
def hkl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    chunk_mask: Tensor,
    common_student: Tensor,
    common_teacher: Tensor,
    *,
    beta: float = 0.0,
    weights: str | tuple[float, float] = "adaptive",
    temperature: float = 1.0,
    chunk_method: ChunkMethod = "mean",
    student_ids: Tensor | None = None,
    teacher_ids: Tensor | None = None,
    chunk_size: int | None = 256,
    use_checkpoint: bool = True,
    truncate: int | None = None,
    t2: bool = False,
    fast: bool = True,
) -> LossOutput:
    """H-KL, summed over valid chunks c -- the GOLD hybrid of :func:`xbench.losses.gold.gold_loss`

        L_c = w_C * sum_j KL-terms(p_T[t_j], p_S[s_j]) + w_U * ULD(p_S[U_S], p_T[U_T])

    but with the relaxed common set: (s, t) is a pair when W's largest weight in row s is >= 0.6
    and sits on t (collision on t: highest weight, then lowest student id). Build the pairs with
    ``xbench.tokenpair.projection.relaxed_common_pairs(proj, threshold=0.6)`` once and pass them
    in; W itself is fixed under H-KL. Default beta = 0 (forward KL on the pairs, the paper's
    "KL on the common pairs"); full-softmax sub-vectors, no T^2 (same conventions as gold).

    Args and Returns: as :func:`xbench.losses.gold.gold_loss` (``truncate``, ``t2``: the authors'
    conventions; ``fast``: the closed-form kernel where it applies).
    """
    return hybrid_loss(
        student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask,
        common_student, common_teacher, beta=beta, weights=weights, temperature=temperature,
        chunk_method=chunk_method, student_ids=student_ids, teacher_ids=teacher_ids,
        chunk_size=chunk_size, use_checkpoint=use_checkpoint, truncate=truncate, t2=t2,
        fast=fast,
    )  # fmt: skip
