"""Same-tokenizer distillation: forward KL, reverse KL, generalized JSD, per token, shifted."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xbench.losses.base import LossOutput, sliced_sums
from xbench.losses.ce import shifted_valid_rows

__all__ = ["Divergence", "divergence_terms", "kd_loss"]

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


def divergence_terms(
    log_p_s: Tensor, log_p_t: Tensor, divergence: Divergence = "forward_kl", beta: float = 0.5
) -> Tensor:
    """Element-wise divergence contributions; summing the last dim gives the divergence.

    With p_S = exp(log_p_s), p_T = exp(log_p_t):
      forward_kl:  p_T (log p_T - log p_S)                     -> KL(p_T || p_S)
      reverse_kl:  p_S (log p_S - log p_T)                     -> KL(p_S || p_T)
      jsd:         beta p_T (log p_T - log m) + (1 - beta) p_S (log p_S - log m),
                   m = beta p_T + (1 - beta) p_S                 (GKD / TRL generalized JSD)
    Endpoints of ``jsd`` (TRL's convention, made explicit): beta = 0 is KL(p_T || p_S) and beta = 1
    is KL(p_S || p_T). They are the limits of JSD_beta / beta (beta -> 0) and JSD_beta / (1 - beta)
    (beta -> 1); the raw JSD_beta itself tends to 0 at both ends.

    The terms are defined element-wise, so they also apply to sub-vectors of distributions (GOLD's
    common set, where they need not sum to 1 and the "KL" may be negative). Inputs must be finite
    (log-softmax outputs are); the product p * (log p - ...) is then 0 where p underflows.

    Args:
        log_p_s, log_p_t: (..., V) log-probabilities of student and teacher (same shape).
        divergence: which divergence.
        beta: JSD mixture weight of the teacher, in [0, 1].

    Returns:
        (..., V) contributions.
    """
    if divergence == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta={beta} must be in [0, 1]")
        if beta == 0.0:
            divergence = "forward_kl"
        elif beta == 1.0:
            divergence = "reverse_kl"
    if divergence == "forward_kl":
        return log_p_t.exp() * (log_p_t - log_p_s)
    if divergence == "reverse_kl":
        return log_p_s.exp() * (log_p_s - log_p_t)
    if divergence == "jsd":
        log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log1p(-beta))
        return beta * log_p_t.exp() * (log_p_t - log_m) + (1.0 - beta) * log_p_s.exp() * (
            log_p_s - log_m
        )
    raise ValueError(f"unknown divergence {divergence!r}")


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_k_scope: Literal["position", "microbatch"] = "position",
    ignore_index: int = -100,
    chunk_size: int | None = 1024,
    use_checkpoint: bool = True,
) -> LossOutput:
    """Same-tokenizer KD:  T^2 * sum_{valid p} D(p_T(.|z^T_p / T), p_S(.|z^S_p / T)).

    ``D`` is one of :func:`divergence_terms` (default forward KL(p_T || p_S); ``jsd`` with
    ``beta``). Both models share one vocabulary and one tokenization, so the logits at the same
    position compare directly; position p is valid when ``labels[:, p+1] != ignore_index`` (the
    shifted next-token convention of CE).

    Teacher top-k (``top_k``): per position, keep the teacher's k largest logits, renormalize both
    distributions over those k columns (log-softmax of the gathered logits), and compare there.
    ``top_k_scope="microbatch"`` (the authors' code): one set of k columns for the micro-batch,
    the teacher's highest max-logit ids over every position, then the same per-position compare.

    Args:
        student_logits, teacher_logits: (B, T, V).
        labels: (B, T) ids; only used for the mask.
        divergence, beta: see :func:`divergence_terms`.
        temperature: T; both sides divided by T, result times T^2 (Hinton) so gradients keep their
            scale across T.
        top_k: teacher top-k restriction, None = full vocabulary.
        ignore_index: label value excluded.
        chunk_size: positions per slice (memory ~ chunk_size * V).
        use_checkpoint: checkpoint slices under autograd.

    Returns:
        LossOutput(total = sum over valid positions, count = valid positions, components =
        {"kd": total, "top1_agree": positions where argmax p_S == argmax p_T}).
        Identical logits -> 0 (every divergence). All-masked -> 0 with count 0.
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"kd needs one vocabulary; got V_S={student_logits.shape[-1]} "
            f"V_T={teacher_logits.shape[-1]} (use a cross-tokenizer loss)"
        )
    if top_k_scope not in ("position", "microbatch"):
        raise ValueError(f"top_k_scope={top_k_scope!r}: 'position' or 'microbatch'")
    shared = None
    if top_k is not None and top_k_scope == "microbatch" and top_k < teacher_logits.shape[-1]:
        with torch.no_grad():
            best = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]).amax(0)
            shared = torch.sort(best.topk(top_k).indices).values  # (k,)
    rows, _ = shifted_valid_rows(labels, ignore_index)
    s_flat = student_logits.reshape(-1, student_logits.shape[-1])  # (B*T, V)
    t_flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])  # (B*T, V)

    def run(start: int, end: int, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r = rows[start:end]
        zs, zt = s[r].float() / temperature, t[r].float() / temperature  # (n, V)
        if shared is not None:
            zs, zt = zs[:, shared], zt[:, shared]
        elif top_k is not None and top_k < zt.shape[-1]:
            cols = zt.topk(top_k, dim=-1).indices  # (n, k)
            zs, zt = zs.gather(1, cols), zt.gather(1, cols)
        lps, lpt = F.log_softmax(zs, -1), F.log_softmax(zt, -1)
        kd = divergence_terms(lps, lpt, divergence, beta).sum() * temperature**2
        agree = (lps.argmax(-1) == lpt.argmax(-1)).sum().to(kd.dtype)
        return kd, agree

    out = sliced_sums(run, int(rows.numel()), chunk_size, (s_flat, t_flat), use_checkpoint)
    if out is None:
        zero = s_flat.sum() * 0.0
        out = (zero, zero.detach())
    count = torch.tensor(int(rows.numel()), device=student_logits.device)
    return LossOutput(out[0], count, {"kd": out[0].detach(), "top1_agree": out[1].detach()})
