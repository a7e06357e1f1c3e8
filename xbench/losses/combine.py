"""Mixing CE with distillation terms, and several teachers into one distillation term.

The trainer's objective (``xbench/engine/objective.py``) calls :func:`teacher_weights` and
:func:`mix_ce_kd` once per micro-batch; nothing else mixes CE and KD. Everything here takes scalars
already divided by the optimizer step's *global* unit counts (all micro-batches, all ranks) and
returns a scalar to back-propagate plus detached logs; no model, no optimizer.

What a KD term can look like (why the scale uses absolute values):
  * KL, JSD, ULD and P-KL are >= 0.
  * GOLD's and H-KL's common-set term is a divergence on *sub-vectors* of the two full-vocabulary
    distributions (the pairs (s_j, t_j)), not renormalised over the common set, so it can be
    negative. Forward KL on the pairs, sum_j p_T[t_j] (log p_T[t_j] - log p_S[s_j]), with teacher
    common mass M = sum_j p_T[t_j] and the student free to put up to all its mass on the pairs, is
    minimised by p_S[s_j] = p_T[t_j] / M, where it equals M log M >= -1/e (at M = 1/e). Reverse KL
    on the pairs has the minimum -M/e >= -1/e. So per chunk KD >= -w_common / e (times T^2 where
    the convention has it): negative whenever the student puts relatively more mass on the common
    set than the teacher, which is the normal case early in training.
  * A signed ratio sg(CE / KD) then flips the sign of the KD gradient, and a ratio over a KD near 0
    explodes (the trainer once logged kd_scale = 1.2e9 and loss = -4e7 this way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xbench.losses.ce import shifted_valid_rows
from xbench.vocab import MIX_MODES, MULTI_TEACHER

__all__ = [
    "MIX_MODES",
    "MULTI_TEACHER",
    "adaptive_teacher_weights",
    "average_teacher_logits",
    "best_teacher",
    "mix_ce_kd",
    "teacher_scores",
    "teacher_weights",
]

_SCORE = {"softmax_ce": "neg_ce", "softmax_entropy": "neg_entropy", "softmax_maxprob": "max_prob"}


def mix_ce_kd(
    ce: Tensor,
    kd: Tensor,
    *,
    mode: Literal["dynamic", "fixed"] = "dynamic",
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    max_scale: float = 1.0e3,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The micro-batch loss from its CE and KD parts (both already divided by global counts).

    ``dynamic`` (the authors' code, paper Eq. "dynamic scaling"):

        L = s * KD + CE,   s = sg( min(|CE| / |KD|, max_scale) )

    The value is CE + sign(KD) |CE| (2 CE when KD > 0, 0 when KD < 0), so |L| <= 2 |CE| always;
    the gradient is CE's plus KD's rescaled to CE's magnitude. Absolute values keep the KD
    gradient's sign when GOLD/H-KL's sub-vector KD is negative (module docstring). The explicit
    rule for a tiny |KD|: s is capped at ``max_scale`` (``capped`` = 1 is logged), so a KD that
    passes through 0 cannot blow up the step; KD == 0 gives s = max_scale and a KD gradient
    that is 0 at that point anyway. ``ce_weight``/``kd_weight`` are not used (the authors ignore
    fixed weights under dynamic scaling; the config check refuses setting them).

    ``fixed``: L = ce_weight * CE + kd_weight * KD.

    Because both parts are divided by the step's global counts, s of a micro-batch is the ratio of
    its *shares* of the step's CE and KD; the sum of the micro-batch values is the step's loss.
    Under ``dynamic`` the scale is per micro-batch (as in the authors' code), so the update depends
    on how a step is split into micro-batches; ``fixed`` does not.

    Args:
        ce, kd: scalars (``kd`` carries the graph of every teacher's KD).
        mode: ``"dynamic"`` or ``"fixed"``.
        ce_weight, kd_weight: fixed weights.
        max_scale: cap of the dynamic scale (> 0).

    Returns:
        (loss, {"loss", "loss_ce", "loss_kd", "kd_scale", "kd_scale_capped"} detached; the last
        two only under ``dynamic``).
    """
    if mode == "dynamic":
        if not max_scale > 0:
            raise ValueError(f"mix.max_scale={max_scale} must be > 0; the default is 1000.")
        ratio = ce.detach().abs() / kd.detach().abs().clamp_min(torch.finfo(kd.dtype).tiny)
        capped = ratio > max_scale
        scale = ratio.clamp_max(max_scale)
        loss = scale * kd + ce
        logs = {"kd_scale": scale, "kd_scale_capped": capped.to(kd.dtype)}
    elif mode == "fixed":
        loss = ce_weight * ce + kd_weight * kd
        logs = {}
    else:
        raise ValueError(f"mix.mode={mode!r}; use one of {MIX_MODES}.")
    logs.update(loss=loss.detach(), loss_ce=ce.detach(), loss_kd=kd.detach())
    return loss, logs


def teacher_weights(
    multi: str, static: Sequence[float], scores: Sequence[Tensor] | None = None
) -> Tensor:
    """Per-teacher weights w_i of KD = sum_i w_i KD_i for one micro-batch.

    ``static``: the configured weights (paper: 0.2 Llama-3.2-3B, 0.8 Phi-4-mini). ``softmax_*``:
    softmax of the teachers' scores (:func:`teacher_scores`, temperature 1, detached). ``best``:
    weight 1 on the highest-scoring teacher (score ``neg_ce``: the lowest teacher CE, the authors'
    "select"), 0 elsewhere. One teacher: its static weight, whatever ``multi`` says.

    Raises:
        ValueError: unknown ``multi``, or scores missing for an adaptive rule.
    """
    if multi not in MULTI_TEACHER:
        raise ValueError(f"kd.multi_teacher={multi!r}; use one of {MULTI_TEACHER}.")
    w = torch.tensor([float(x) for x in static], dtype=torch.float32)
    if multi in ("static", "logit_avg") or len(static) == 1:
        return w
    if scores is None:
        raise ValueError(f"kd.multi_teacher={multi} needs per-teacher scores")
    s = torch.stack([x.float().cpu() for x in scores])
    if multi == "best":
        out = torch.zeros_like(s)
        out[best_teacher(s)] = 1.0
        return out
    return adaptive_teacher_weights(s)


def score_kind(multi: str) -> str:
    """The :func:`teacher_scores` kind an adaptive ``kd.multi_teacher`` rule reads."""
    return _SCORE.get(multi, "neg_ce")


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
            f"{[s[-1] for s in shapes]} (use per-teacher losses with kd.multi_teacher weights "
            "instead)"
        )
    if len(set(shapes)) != 1:
        raise ValueError(f"logit averaging needs identical (B, T, V) shapes; got {shapes}")
    w = torch.full((len(shapes),), 1.0 / len(shapes)) if weights is None else torch.tensor(weights)
    w = w.to(teacher_logits[0].device, torch.float32)
    return sum(wi * t.float() for wi, t in zip(w, teacher_logits, strict=True))
