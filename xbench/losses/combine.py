"""Mixing CE with distillation terms, and several teachers into one distillation term.

Everything here takes already-computed :class:`LossOutput` sums (or normalized scalars) and
returns a scalar to back-propagate plus detached logs; no model, no optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xbench.losses.base import LossOutput
from xbench.losses.ce import shifted_valid_rows

__all__ = [
    "adaptive_teacher_weights",
    "average_teacher_logits",
    "best_teacher",
    "combine_ce_kd",
    "teacher_scores",
    "weighted_teachers",
]


def _norm(out: LossOutput, denom: float | Tensor | None) -> Tensor:
    """total / denom, denom defaulting to the local count; 0 (not NaN) when nothing is valid."""
    d = out.count if denom is None else torch.as_tensor(denom)
    return out.total / d.clamp_min(1).to(out.total.dtype)


def combine_ce_kd(
    ce: LossOutput,
    kd: LossOutput,
    *,
    mode: Literal["dynamic", "fixed"] = "dynamic",
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    ce_denom: float | Tensor | None = None,
    kd_denom: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = ce_weight * CE + s * KD, with CE = ce.total / ce_denom and KD = kd.total / kd_denom.

    ``dynamic`` (X-Token paper): s = sg(CE / KD), so L = sg(CE/KD) * KD + CE -- the KD gradient is
    rescaled to CE's magnitude (s = 0 when KD is 0). ``fixed``: s = kd_weight.

    Gradient accumulation: pass the optimizer step's global counts as ``ce_denom``/``kd_denom``
    (the sums of ``count`` over micro-batches and ranks). With ``fixed`` the accumulated loss is
    then exactly the full-batch loss; with ``dynamic`` the detached scale is computed from the
    micro-batch's own values (a per-micro-batch ratio; exact only without accumulation).

    Returns:
        (loss scalar, {"loss_ce", "loss_kd", "kd_scale"} detached).
    """
    ce_v, kd_v = _norm(ce, ce_denom), _norm(kd, kd_denom)
    if mode == "dynamic":
        # The ratio is taken from local means so that it does not depend on the denominators.
        ce_m, kd_m = ce.mean().detach(), kd.mean().detach()
        scale = torch.where(kd_m.abs() > 0, ce_m / kd_m.abs().clamp_min(1e-30), 0.0)
    elif mode == "fixed":
        scale = torch.as_tensor(kd_weight, dtype=kd_v.dtype)
    else:
        raise ValueError(f"mode={mode!r}: 'dynamic' or 'fixed'")
    loss = ce_weight * ce_v + scale * kd_v
    return loss, {"loss_ce": ce_v.detach(), "loss_kd": kd_v.detach(), "kd_scale": scale.detach()}


def weighted_teachers(losses: Sequence[Tensor], weights: Sequence[float] | Tensor) -> Tensor:
    """Static (or given) weighted sum sum_i w_i L_i of per-teacher normalized losses.

    Each teacher keeps its own method (kd / hkl / pkl ...) and its own unit count; pass each as
    its normalized scalar. The paper's best setting: weights (0.2 Llama-3.2-3B, 0.8 Phi-4-mini).
    """
    if len(losses) != len(weights):
        raise ValueError(f"{len(losses)} teacher losses, {len(weights)} weights")
    w = torch.as_tensor(weights, dtype=losses[0].dtype, device=losses[0].device)
    return (torch.stack(list(losses)) * w).sum()


def teacher_scores(
    teacher_logits: Tensor,
    labels: Tensor,
    kind: Literal["neg_ce", "neg_entropy", "max_prob"] = "neg_ce",
    ignore_index: int = -100,
) -> Tensor:
    """One teacher's quality score on a batch (higher = more trusted), mean over valid positions.

    neg_ce: -CE(teacher, next labels); neg_entropy: -H(p_T); max_prob: mean max_v p_T(v).
    Positions follow the shifted convention (logits at p predict labels[p+1]).
    For a teacher with its own tokenization pass its own labels. Returns a detached scalar.
    """
    with torch.no_grad():
        rows, targets = shifted_valid_rows(labels, ignore_index)
        if rows.numel() == 0:
            return teacher_logits.new_zeros((), dtype=torch.float32)
        lp = F.log_softmax(teacher_logits.reshape(-1, teacher_logits.shape[-1])[rows].float(), -1)
        if kind == "neg_ce":
            return lp.gather(1, targets[:, None]).mean()
        if kind == "neg_entropy":
            return (lp.exp() * lp).sum(-1).mean()
        if kind == "max_prob":
            return lp.max(-1).values.exp().mean()
    raise ValueError(f"unknown score kind {kind!r}")


def adaptive_teacher_weights(scores: Sequence[Tensor] | Tensor, tau: float = 1.0) -> Tensor:
    """softmax(scores / tau), detached: the adaptive alternative to static weights."""
    s = torch.as_tensor(torch.stack(list(scores)) if not isinstance(scores, Tensor) else scores)
    return torch.softmax(s.float() / tau, dim=0).detach()


def best_teacher(scores: Sequence[Tensor] | Tensor) -> int:
    """Index of the highest-scoring teacher for this batch (ties: the first)."""
    s = torch.stack(list(scores)) if not isinstance(scores, Tensor) else scores
    return int(torch.argmax(s))


def average_teacher_logits(
    teacher_logits: Sequence[Tensor], weights: Sequence[float] | None = None
) -> Tensor:
    """Weighted average of several teachers' logits (then run ``kd``/``pkl`` on the result).

    Only meaningful when the teachers share one vocabulary and one tokenization of the batch.

    Raises:
        ValueError: vocabulary (last dim) or sequence shapes differ.
    """
    shapes = [tuple(t.shape) for t in teacher_logits]
    if len({s[-1] for s in shapes}) != 1:
        raise ValueError(
            f"logit averaging needs same-vocabulary teachers; got vocab sizes "
            f"{[s[-1] for s in shapes]} (use weighted_teachers with per-teacher losses instead)"
        )
    if len(set(shapes)) != 1:
        raise ValueError(f"logit averaging needs identical (B, T, V) shapes; got {shapes}")
    w = torch.full((len(shapes),), 1.0 / len(shapes)) if weights is None else torch.tensor(weights)
    w = w.to(teacher_logits[0].device, torch.float32)
    return sum(wi * t.float() for wi, t in zip(w, teacher_logits, strict=True))
