"""GOLD's hybrid loss, a divergence on a 1-to-1 common vocabulary and ULD on the rest; registered
as ``gold`` (exact string pairs) and ``hkl`` (H-KL: the relaxed pairs read from W).

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

The pairs come in as two LongTensors; gold and hkl differ only in how they were built.
gold: :data:`GOLD_VARIANTS` names the variants,
``xbench.tokenpair.projection.exact_common_pairs(s_tok, t_tok, semantics=...)`` builds them.
hkl (X-Token's H-KL): (s, t) is a pair when W's largest weight in row s is >= 0.6 and sits on t
(collision on t: highest weight, then lowest student id),
``xbench.tokenpair.projection.relaxed_common_pairs(proj, threshold=0.6)``; W itself is fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xbench.losses.base import LossOutput
from xbench.losses.chunks import cross_tokenizer_sums
from xbench.losses.hybrid_ops import HybridSets, hybrid_sums, uses_kernel
from xbench.losses.kd import divergence_terms
from xbench.losses.sorting import sorted_l1
from xbench.losses.view import SHARED_READS, ChunkOptions, ChunkView

__all__ = ["GOLD_VARIANTS", "HYBRID_READS", "hybrid_loss", "hybrid_terms"]

GOLD_VARIANTS: dict[str, str] = {
    "trl": "pairs = raw get_vocab() string equality (TRL GOLDTrainer); Llama 'Ġthe' != SP '▁the'",
    "canonical": "pairs = canonical_vocab string equality (space/newline markers unified, "
    "byte-fallback merged, specials by role); lowest id wins on duplicate canonical strings",
}

# The ChunkOptions fields gold and hkl read.
HYBRID_READS = SHARED_READS | {"beta", "weights", "truncate", "t2"}


def hybrid_terms(
    lq_s: Tensor,
    lq_t: Tensor,
    sets: HybridSets,
    beta: float,
    truncate: int | None = None,
    factor: float = 1.0,
) -> dict[str, Tensor]:
    """Per-slice sums of the hybrid loss from chunk log-probabilities.

    Args:
        lq_s: (n, V_S) student chunk log-probs; lq_t: (n, V_T) teacher chunk log-probs.
        sets: the pairs, their complements and the term weights.
        beta: divergence on the pairs (``jsd`` convention of :func:`divergence_terms`: 0 = forward
            KL(p_T||p_S), 1 = reverse KL).
        truncate: ULD over the top ``truncate`` ranks only (:func:`sorted_l1`; authors: 8192).
        factor: multiplies both terms (T^2 under the authors' convention, else 1).

    Returns:
        {"loss", "kl_common", "l1_uncommon", "student_mass_uncommon", "teacher_mass_common"}: sums.
    """
    common_s, common_t = sets.common_s, sets.common_t
    m = int(common_s.numel())
    # One column gather per side (common ids first, then the complement) instead of four: the
    # gathers and their backward scatters are full passes over (n, V).
    ls = lq_s.index_select(1, torch.cat([common_s, sets.uncommon_s]))  # (n, V_S) permuted
    lt = lq_t.index_select(1, torch.cat([common_t, sets.uncommon_t]))  # (n, V_T) permuted
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
        "loss": sets.w_common * div + sets.w_uncommon * l1,
        "kl_common": div.detach(),
        "l1_uncommon": l1.detach(),
        "student_mass_uncommon": ps_u.sum().detach() if ps_u.shape[1] else lq_s.new_zeros(()),
        "teacher_mass_common": t_mass_c.detach(),
    }


def hybrid_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    pairs: tuple[Tensor, Tensor],
    *,
    options: ChunkOptions = ChunkOptions(),
) -> LossOutput:
    """GOLD / H-KL hybrid loss, summed over valid chunks c:

        L_c = f * w_C * sum_j D_beta(p_T[t_j], p_S[s_j])
              + f * w_U * sum_r | sort_desc(p_S[U_S])_r - sort_desc(p_T[U_T])_r |

    with (s_j, t_j) the pairs (gold: exact 1-to-1 string pairs; hkl: W's relaxed pairs, see the
    module docstring), U_S / U_T the unpaired ids, p = the chunk distributions of the FULL
    softmax at temperature T (:mod:`xbench.losses.chunks`), D_beta the element-wise terms of
    :func:`xbench.losses.kd.divergence_terms` (beta = 0: forward KL, the X-Token baseline and
    H-KL's "KL on the common pairs"; TRL's config default is 0.5), f = T^2 under ``t2`` else 1
    (xbench and TRL: no T^2). See the module docstring for TRL parity and Proposition 1.

    Args:
        student_logits: (B, Ts, V_S); teacher_logits: (B, Tt, V_T).
        view: the batch's chunks (and ids, for ``chain``).
        pairs: ``(student ids (M,), teacher ids (M,))`` long, 1-to-1.
        options: reads ``beta`` (divergence on the pairs), ``weights`` (``"adaptive"``:
            |pairs| / V_T, or ``(w_common, w_uncommon)``), ``truncate`` and ``t2`` (the authors'
            conventions, ``kd.semantics=authors``: ULD over the top ``truncate`` ranks without
            padding, both terms times T^2), ``fast`` (the closed-form kernel
            :func:`xbench.losses.hybrid_ops.hybrid_sums`, same value and gradients, where it
            applies: beta 0, teacher without gradient; it always differentiates slice by slice,
            whatever ``use_checkpoint``), and the shared ``temperature``, ``chunk_method``,
            ``chunk_size``, ``use_checkpoint``.

    Returns:
        LossOutput(total = sum over valid chunks, count = valid chunks, components = sums of
        kl_common, l1_uncommon, student_mass_uncommon, teacher_mass_common, w_common).
        The common "KL" is on sub-vectors and can be negative; identical distributions over
        identical vocabularies with all ids paired give 0. All-masked -> 0, count 0.
    """
    options.check("gold/hkl", HYBRID_READS)
    sets = HybridSets.build(
        pairs, student_logits.shape[-1], teacher_logits.shape[-1], options.weights
    )
    if uses_kernel(options, teacher_logits):
        sums, n = hybrid_sums(student_logits, teacher_logits, view, sets, options=options)
        return _hybrid_output(sums, n, student_logits, sets.w_common)

    def term(lq_s: Tensor, lq_t: Tensor) -> dict[str, Tensor]:
        return hybrid_terms(lq_s, lq_t, sets, options.beta, options.truncate, options.factor)

    sums, n = cross_tokenizer_sums(student_logits, teacher_logits, view, term, options=options)
    return _hybrid_output(sums, n, student_logits, sets.w_common)


def _hybrid_output(
    sums: dict[str, Tensor], n: int, student_logits: Tensor, w_c: float
) -> LossOutput:
    """LossOutput of the hybrid's per-slice sums (a zero keeping the graph when nothing is
    valid); ``w_common`` is logged as a sum over chunks like every component."""
    count = torch.tensor(n, device=student_logits.device)
    if not sums:
        zero = student_logits.sum() * 0.0
        return LossOutput(zero, count, {"kl_common": zero.detach(), "l1_uncommon": zero.detach()})
    total = sums.pop("loss")
    sums["w_common"] = torch.tensor(w_c * n)  # sums, like every component
    return LossOutput(total, count, sums)
