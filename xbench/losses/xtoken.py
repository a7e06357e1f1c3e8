"""X-Token blend: alpha * H-KL + (1 - alpha) * P-KL, sharing one pass over the chunks."""

from __future__ import annotations

import torch
from torch import Tensor

from xbench.losses.base import LossOutput, register
from xbench.losses.chunks import ChunkMethod, cross_tokenizer_sums
from xbench.losses.gold import _complement, hybrid_terms, hybrid_weights
from xbench.losses.pkl import TopKScope, column_sets, projected_kl_terms

__all__ = ["xtoken_loss"]


@register("xtoken")
def xtoken_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    chunk_mask: Tensor,
    common_student: Tensor,
    common_teacher: Tensor,
    w_indices: Tensor,
    w_weights: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.0,
    weights: str | tuple[float, float] = "adaptive",
    top_k: int = 8192,
    top_k_scope: TopKScope = "microbatch",
    temperature: float = 1.0,
    chunk_method: ChunkMethod = "mean",
    student_ids: Tensor | None = None,
    teacher_ids: Tensor | None = None,
    chunk_size: int | None = 256,
    use_checkpoint: bool = True,
    authors: bool = False,
) -> LossOutput:
    """L_c = alpha * HKL_c + (1 - alpha) * PKL_c, summed over valid chunks.

    alpha = 1 is H-KL (:func:`xbench.losses.hkl.hkl_loss`, relaxed pairs ``common_*``), alpha = 0
    is P-KL (:func:`xbench.losses.pkl.pkl_loss`, projection ``w_*``); the chunk distributions are
    computed once per slice and shared. ``beta`` (kd.kl as a generalized-JSD beta) applies to
    both terms: the H-KL pairs and the P-KL columns. Each term keeps its own convention (H-KL:
    no T^2; P-KL: T^2). Terms with weight 0 are skipped.

    ``authors=True`` (``kd.semantics=authors``): each term with the authors' formula
    (:mod:`xbench.losses.presets`); their chunk distributions differ, so two passes.

    Returns:
        LossOutput(total, count = valid chunks, components = H-KL's (prefixed ``hkl/``) and
        P-KL's (prefixed ``pkl/``) sums).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    if authors:
        return _xtoken_authors(
            student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask,
            common_student, common_teacher, w_indices, w_weights, alpha=alpha, beta=beta,
            top_k=top_k, temperature=temperature, chunk_size=chunk_size,
            use_checkpoint=use_checkpoint,
        )  # fmt: skip
    V_S, V_T = student_logits.shape[-1], teacher_logits.shape[-1]
    cs, ct = common_student.long(), common_teacher.long()
    us, ut = _complement(cs, V_S), _complement(ct, V_T)
    w_c, w_u = hybrid_weights(weights, int(cs.numel()), V_T)
    idx = w_indices.long()
    columns = reach = unreach = None
    if alpha < 1.0:
        columns, reach, unreach = column_sets(
            teacher_logits, teacher_chunk, chunk_mask, idx, w_weights, top_k, top_k_scope,
            chunk_method=chunk_method, temperature=temperature, teacher_ids=teacher_ids,
            chunk_size=chunk_size,
        )  # fmt: skip

    def term(lq_s: Tensor, lq_t: Tensor, w: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        loss = lq_s.new_zeros(())
        if alpha > 0.0:
            h = hybrid_terms(lq_s, lq_t, cs, ct, us, ut, beta, w_c, w_u)
            loss = loss + alpha * h.pop("loss")
            out.update({f"hkl/{k}": v for k, v in h.items()})
        if alpha < 1.0:
            p = projected_kl_terms(
                lq_s, lq_t, idx, w, columns, top_k, temperature, beta, reach, unreach
            )
            loss = loss + (1.0 - alpha) * p.pop("loss")
            out.update({f"pkl/{k}": v for k, v in p.items()})
        out["loss"] = loss
        return out

    sums, n = cross_tokenizer_sums(
        student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask, term,
        (w_weights,), chunk_method=chunk_method, temperature=temperature,
        student_ids=student_ids, teacher_ids=teacher_ids, chunk_size=chunk_size,
        use_checkpoint=use_checkpoint,
    )  # fmt: skip
    count = torch.tensor(n, device=student_logits.device)
    if not sums:
        return LossOutput(student_logits.sum() * 0.0 + w_weights.sum() * 0.0, count, {})
    total = sums.pop("loss")
    return LossOutput(total, count, {k: v.detach() for k, v in sums.items()})


def _xtoken_authors(
    s_logits: Tensor,
    t_logits: Tensor,
    s_chunk: Tensor,
    t_chunk: Tensor,
    mask: Tensor,
    cs: Tensor,
    ct: Tensor,
    w_indices: Tensor,
    w_weights: Tensor,
    *,
    alpha: float,
    beta: float,
    top_k: int,
    temperature: float,
    chunk_size: int | None,
    use_checkpoint: bool,
) -> LossOutput:
    """alpha * H-KL + (1 - alpha) * P-KL, each with the authors' formula."""
    from xbench.losses.gold import hybrid_loss
    from xbench.losses.pkl import pkl_loss
    from xbench.losses.presets import loss_kwargs

    args = (s_logits, t_logits, s_chunk, t_chunk, mask)
    kw = dict(temperature=temperature, chunk_size=chunk_size, use_checkpoint=use_checkpoint)
    total, count, comps = None, None, {}
    if alpha > 0.0:
        h = hybrid_loss(*args, cs, ct, beta=beta, **loss_kwargs("authors", "hkl"), **kw)
        total, count = alpha * h.total, h.count
        comps.update({f"hkl/{k}": v for k, v in h.components.items()})
    if alpha < 1.0:
        p = pkl_loss(*args, w_indices, w_weights, top_k=top_k, beta=beta, authors=True, **kw)
        total = (1.0 - alpha) * p.total if total is None else total + (1.0 - alpha) * p.total
        count = p.count
        comps.update({f"pkl/{k}": v for k, v in p.components.items()})
    assert total is not None and count is not None
    return LossOutput(total, count, comps)
