"""X-Token blend: alpha * H-KL + (1 - alpha) * P-KL, sharing one pass over the chunks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from xbench.losses.base import LossOutput
from xbench.losses.chunks import cross_tokenizer_sums
from xbench.losses.gold import hybrid_loss, hybrid_terms
from xbench.losses.hybrid_ops import HybridSets
from xbench.losses.pkl import PKL_READS, column_sets, pkl_loss, projected_kl_terms
from xbench.losses.presets import loss_kwargs
from xbench.losses.view import ChunkOptions, ChunkView

__all__ = ["xtoken_loss"]


def xtoken_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    pairs: tuple[Tensor, Tensor],
    projection: tuple[Tensor, Tensor],
    *,
    alpha: float = 0.5,
    options: ChunkOptions = ChunkOptions(),
) -> LossOutput:
    """L_c = alpha * HKL_c + (1 - alpha) * PKL_c, summed over valid chunks.

    alpha = 1 is H-KL (:func:`xbench.losses.gold.hybrid_loss` on the relaxed ``pairs``), alpha = 0
    is P-KL (:func:`xbench.losses.pkl.pkl_loss`, W = ``projection``, (indices, weights)); the
    chunk distributions are computed once per slice and shared. ``options.beta`` (kd.kl as a
    generalized-JSD beta) applies to both terms: the H-KL pairs and the P-KL columns. Each term
    keeps its own convention (H-KL: no T^2; P-KL: T^2). Terms with weight 0 are skipped.

    ``options`` also reads ``weights`` (H-KL's), ``top_k``, ``top_k_scope`` (P-KL's) and the
    shared fields; ``options.authors`` (``kd.semantics=authors``): each term with the authors'
    formula (:mod:`xbench.losses.presets`); their chunk distributions differ, so two passes, and
    ``fast`` then picks each term's kernel.

    Returns:
        LossOutput(total, count = valid chunks, components = H-KL's (prefixed ``hkl/``) and
        P-KL's (prefixed ``pkl/``) sums).
    """
    options.check("xtoken", PKL_READS | {"weights"})
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    if options.authors:
        return _xtoken_authors(student_logits, teacher_logits, view, pairs, projection,
                               alpha, options)  # fmt: skip
    sets = HybridSets.build(
        pairs, student_logits.shape[-1], teacher_logits.shape[-1], options.weights
    )
    idx, w_weights = projection[0].long(), projection[1]
    columns = reach = unreach = None
    if alpha < 1.0:
        columns, reach, unreach = column_sets(teacher_logits, view, (idx, w_weights), options)

    def term(lq_s: Tensor, lq_t: Tensor, w: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        loss = lq_s.new_zeros(())
        if alpha > 0.0:
            h = hybrid_terms(lq_s, lq_t, sets, options.beta)
            loss = loss + alpha * h.pop("loss")
            out.update({f"hkl/{k}": v for k, v in h.items()})
        if alpha < 1.0:
            p = projected_kl_terms(
                lq_s, lq_t, idx, w, columns, options.top_k, options.temperature, options.beta,
                reach, unreach,
            )  # fmt: skip
            loss = loss + (1.0 - alpha) * p.pop("loss")
            out.update({f"pkl/{k}": v for k, v in p.items()})
        out["loss"] = loss
        return out

    sums, n = cross_tokenizer_sums(
        student_logits, teacher_logits, view, term, (w_weights,), options=options
    )
    count = torch.tensor(n, device=student_logits.device)
    if not sums:
        return LossOutput(student_logits.sum() * 0.0 + w_weights.sum() * 0.0, count, {})
    total = sums.pop("loss")
    return LossOutput(total, count, {k: v.detach() for k, v in sums.items()})


def _xtoken_authors(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    pairs: tuple[Tensor, Tensor],
    projection: tuple[Tensor, Tensor],
    alpha: float,
    options: ChunkOptions,
) -> LossOutput:
    """alpha * H-KL + (1 - alpha) * P-KL, each with the authors' formula."""
    args = (student_logits, teacher_logits, view)
    # The authors' terms read only these of the cell's options; the preset decides the rest.
    kw: dict[str, Any] = {
        "temperature": options.temperature,
        "chunk_size": options.chunk_size,
        "use_checkpoint": options.use_checkpoint,
        "fast": options.fast,
        "beta": options.beta,
    }
    total, count, comps = None, None, {}
    if alpha > 0.0:
        h = hybrid_loss(*args, pairs, options=ChunkOptions(**kw, **loss_kwargs("authors", "hkl")))
        total, count = alpha * h.total, h.count
        comps.update({f"hkl/{k}": v for k, v in h.components.items()})
    if alpha < 1.0:
        p_opts = replace(ChunkOptions(**kw), top_k=options.top_k, authors=True)
        p = pkl_loss(*args, projection, options=p_opts)
        total = (1.0 - alpha) * p.total if total is None else total + (1.0 - alpha) * p.total
        count = p.count
        comps.update({f"pkl/{k}": v for k, v in p.components.items()})
    assert total is not None and count is not None
    return LossOutput(total, count, comps)
