"""GOLD's hybrid loss: a divergence on the 1-to-1 common vocabulary, ULD on the rest.

Semantics (TRL 1.16 ``ULDLoss._compute_hybrid_uld_loss``, read and re-derived, not copied):

* p_S and p_T are chunk distributions from each model's FULL softmax over its own vocabulary.
  The common-set term compares the sub-vectors p_S[s_j], p_T[t_j] over the pairs (s_j, t_j)
  without renormalizing them. Because p_S[s_j] = exp(z_s) / sum_v exp(z_v) depends on every
  student logit, the forward-KL common term sum_j p_T[t_j] (log p_T[t_j] - log p_S[s_j]) has
  gradient p_S[u] * M_C >= 0 w.r.t. every uncommon student logit u (M_C = sum_j p_T[t_j]): it
  always pushes uncommon tokens down -- the X-Token paper's Proposition 1.
* The uncommon term is ULD: sorted L1 between p_S over the student tokens outside the pairs and
  p_T over the teacher tokens outside the pairs (both un-renormalized), zero-padded.
* Weights: fixed ``(w_common, w_uncommon)`` or adaptive w_common = |pairs| / V_T (V_T = width of
  the teacher logits, i.e. the model head), w_uncommon = 1 - w_common.
* Temperature divides both sides' logits; no T^2 factor (TRL's convention, kept for parity).
* TRL takes log(clamp(p, 1e-8)) of the sub-vectors; here log-probabilities come straight from the
  log-softmax, which differs only for probabilities below 1e-8. TRL averages over chunks per
  sequence and then over sequences; here the loss is a sum over chunks with a chunk count.

The pairs come in as two LongTensors. :data:`GOLD_VARIANTS` names how they were built;
``xbench.tokenpair.projection.exact_common_pairs(s_tok, t_tok, semantics=...)`` builds them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xbench.losses.base import LossOutput, register
from xbench.losses.chunks import ChunkMethod, cross_tokenizer_sums
from xbench.losses.hybrid_ops import hybrid_sums
from xbench.losses.kd import divergence_terms
from xbench.losses.uld import sorted_l1

__all__ = ["GOLD_VARIANTS", "gold_loss", "gold_semantics", "hybrid_terms", "hybrid_weights"]

GOLD_VARIANTS: dict[str, str] = {
    "trl": "pairs = raw get_vocab() string equality (TRL GOLDTrainer); Llama 'Ġthe' != SP '▁the'",
    "canonical": "pairs = canonical_vocab string equality (space/newline markers unified, "
    "byte-fallback merged, specials by role); lowest id wins on duplicate canonical strings",
}


def gold_semantics(variant: str = "trl", **overrides: object) -> dict[str, object]:
    """A record of what a ``gold`` run computed, for its config/metadata."""
    if variant not in GOLD_VARIANTS:
        raise ValueError(f"unknown GOLD variant {variant!r}; choose from {sorted(GOLD_VARIANTS)}")
    rec: dict[str, object] = {
        "variant": variant,
        "pairs": GOLD_VARIANTS[variant],
        "common_term": "divergence_terms(beta) on full-softmax sub-vectors, not renormalized",
        "uncommon_term": "sorted L1 (ULD) on the complements, zero-padded, not renormalized",
        "weights": "adaptive: |pairs|/V_T (teacher head width)",
        "temperature": "both sides z/T, no T^2",
        "reduction": "sum over chunks; trainer divides by the global chunk count",
    }
    rec.update({k: str(v) for k, v in overrides.items()})
    return rec


def hybrid_weights(
    weights: str | tuple[float, float], n_pairs: int, teacher_vocab: int
) -> tuple[float, float]:
    """``"adaptive"`` -> (|pairs| / V_T, 1 - that); a tuple -> itself."""
    if weights == "adaptive":
        w_c = n_pairs / max(1, teacher_vocab)
        return w_c, 1.0 - w_c
    if isinstance(weights, str):
        raise ValueError(f"weights={weights!r}: 'adaptive' or (w_common, w_uncommon)")
    return float(weights[0]), float(weights[1])


def _complement(ids: Tensor, size: int) -> Tensor:
    keep = torch.ones(size, dtype=torch.bool, device=ids.device)
    keep[ids] = False
    return torch.nonzero(keep).squeeze(1)


def hybrid_terms(
    lq_s: Tensor,
    lq_t: Tensor,
    common_s: Tensor,
    common_t: Tensor,
    uncommon_s: Tensor,
    uncommon_t: Tensor,
    beta: float,
    w_common: float,
    w_uncommon: float,
    truncate: int | None = None,
    factor: float = 1.0,
) -> dict[str, Tensor]:
    """Per-slice sums of the hybrid loss from chunk log-probabilities.

    Args:
        lq_s: (n, V_S) student chunk log-probs; lq_t: (n, V_T) teacher chunk log-probs.
        common_s, common_t: (M,) paired ids; uncommon_s, uncommon_t: their complements.
        beta: divergence on the pairs (``jsd`` convention of :func:`divergence_terms`: 0 = forward
            KL(p_T||p_S), 1 = reverse KL).
        w_common, w_uncommon: term weights.
        truncate: ULD over the top ``truncate`` ranks only (:func:`sorted_l1`; authors: 8192).
        factor: multiplies both terms (T^2 under the authors' convention, else 1).

    Returns:
        {"loss", "kl_common", "l1_uncommon", "student_mass_uncommon", "teacher_mass_common"}: sums.
    """
    m = int(common_s.numel())
    # One column gather per side (common ids first, then the complement) instead of four: the
    # gathers and their backward scatters are full passes over (n, V).
    ls = lq_s.index_select(1, torch.cat([common_s, uncommon_s]))  # (n, V_S) permuted
    lt = lq_t.index_select(1, torch.cat([common_t, uncommon_t]))  # (n, V_T) permuted
    pt = lt.exp()  # teacher probabilities, permuted like lt
    lt_c = lt[:, :m]
    if m:
        ls_c, pt_c = ls[:, :m], pt[:, :m]
        if beta == 0.0:  # forward KL, the terms of divergence_terms with p_T reused
            div = (pt_c * (lt_c - ls_c)).sum()
        else:
            div = divergence_terms(ls_c, lt_c, "jsd", beta).sum()
        t_mass_c = pt_c.sum()
    else:
        div = t_mass_c = lq_s.new_zeros(())
    ps_u = ls[:, m:].exp()  # (n, |U_S|)
    pt_u = pt[:, m:]  # (n, |U_T|)
    # TRL skips the term when either side has no uncommon token; so do we.
    l1 = (
        sorted_l1(ps_u, pt_u, truncate).sum()
        if ps_u.shape[1] and pt_u.shape[1]
        else lq_s.new_zeros(())
    )
    if factor != 1.0:
        div, l1 = div * factor, l1 * factor
    return {
        "loss": w_common * div + w_uncommon * l1,
        "kl_common": div.detach(),
        "l1_uncommon": l1.detach(),
        "student_mass_uncommon": ps_u.sum().detach() if ps_u.shape[1] else lq_s.new_zeros(()),
        "teacher_mass_common": t_mass_c.detach(),
    }


def hybrid_loss(
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
    """Shared body of ``gold`` and ``hkl`` (they differ only in how the pairs were built).

    ``truncate`` and ``t2`` select the authors' conventions (ULD over the top ranks only, both
    terms times T^2); see :mod:`xbench.losses.presets`. ``fast``: the closed-form kernel
    (:func:`xbench.losses.hybrid_ops.hybrid_sums`) where it applies, see :func:`uses_kernel`."""
    if common_student.shape != common_teacher.shape:
        raise ValueError("common_student and common_teacher must pair 1-to-1 (same length)")
    V_S, V_T = student_logits.shape[-1], teacher_logits.shape[-1]
    cs, ct = common_student.long(), common_teacher.long()
    us, ut = _complement(cs, V_S), _complement(ct, V_T)
    w_c, w_u = hybrid_weights(weights, int(cs.numel()), V_T)

    def term(lq_s: Tensor, lq_t: Tensor) -> dict[str, Tensor]:
        return hybrid_terms(lq_s, lq_t, cs, ct, us, ut, beta, w_c, w_u, truncate, factor)

    factor = temperature**2 if t2 else 1.0
    if uses_kernel(fast, beta, teacher_logits):
        sums, n = hybrid_sums(
            student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask, cs, ct,
            us, ut, w_common=w_c, w_uncommon=w_u, truncate=truncate, factor=factor,
            chunk_method=chunk_method, temperature=temperature, student_ids=student_ids,
            teacher_ids=teacher_ids, chunk_size=chunk_size,
        )  # fmt: skip
        return _hybrid_output(sums, n, student_logits, w_c)
    sums, n = cross_tokenizer_sums(
        student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask, term,
        chunk_method=chunk_method, temperature=temperature, student_ids=student_ids,
        teacher_ids=teacher_ids, chunk_size=chunk_size, use_checkpoint=use_checkpoint,
    )  # fmt: skip
    return _hybrid_output(sums, n, student_logits, w_c)


def uses_kernel(fast: bool, beta: float, teacher_logits: Tensor) -> bool:
    """Whether gold/hkl/uld take the closed-form kernel: the forward KL on the pairs (beta = 0,
    every preset's default; uld has no pairs) and a teacher without gradient, under every chunk
    method. Reverse KL, JSD and a differentiated teacher keep the generic path."""
    return fast and beta == 0.0 and not (teacher_logits.requires_grad and torch.is_grad_enabled())


def _hybrid_output(
    sums: dict[str, Tensor], n: int, student_logits: Tensor, w_c: float
) -> LossOutput:
    count = torch.tensor(n, device=student_logits.device)
    if not sums:
        zero = student_logits.sum() * 0.0
        return LossOutput(zero, count, {"kl_common": zero.detach(), "l1_uncommon": zero.detach()})
    total = sums.pop("loss")
    sums["w_common"] = torch.tensor(w_c * n)  # sums, like every component
    return LossOutput(total, count, sums)


@register("gold")
def gold_loss(
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
    """GOLD hybrid loss, summed over valid chunks c:

        L_c = w_C * sum_j D_beta(p_T[t_j], p_S[s_j])
              + w_U * sum_r | sort_desc(p_S[U_S])_r - sort_desc(p_T[U_T])_r |

    with (s_j, t_j) the exact 1-to-1 string pairs, U_S / U_T the unpaired ids, p = the chunk
    distributions of the FULL softmax at temperature T (no T^2), D_beta the element-wise terms of
    :func:`xbench.losses.kd.divergence_terms` (beta = 0: forward KL, the X-Token baseline;
    TRL's config default is 0.5). See the module docstring for TRL parity and Proposition 1.

    Args:
        student_logits: (B, Ts, V_S); teacher_logits: (B, Tt, V_T).
        student_chunk: (B, Ts); teacher_chunk: (B, Tt); chunk_mask: (B, C) (PairAlignment).
        common_student, common_teacher: (M,) long, the pairs (``exact_common_pairs``).
        beta: divergence on the pairs.
        weights: ``"adaptive"`` (|pairs| / V_T) or ``(w_common, w_uncommon)``.
        temperature, chunk_method, student_ids, teacher_ids: chunk distributions.
        chunk_size: max predicting rows (tokens) per side in one slice; use_checkpoint: under
            autograd, differentiate slice by slice during the forward (False: one graph).
        truncate, t2: the authors' conventions (``kd.semantics=authors``): ULD over the top
            ``truncate`` ranks without padding, both terms times T^2.
        fast: the closed-form kernel (``hybrid_ops.hybrid_sums``, same value and gradients)
            where it applies (beta 0, teacher without gradient; it always differentiates slice
            by slice, whatever ``use_checkpoint``); False: the generic path.

    Returns:
        LossOutput(total = sum over valid chunks, count = valid chunks, components = sums of
        kl_common, l1_uncommon, student_mass_uncommon, teacher_mass_common, w_common).
        The common "KL" is on sub-vectors and can be negative; identical distributions over
        identical vocabularies with all ids paired give 0. All-masked -> 0, count 0.
    """
    return hybrid_loss(
        student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask,
        common_student, common_teacher, beta=beta, weights=weights, temperature=temperature,
        chunk_method=chunk_method, student_ids=student_ids, teacher_ids=teacher_ids,
        chunk_size=chunk_size, use_checkpoint=use_checkpoint, truncate=truncate, t2=t2,
        fast=fast,
    )  # fmt: skip
