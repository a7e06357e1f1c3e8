"""Semantics presets (``kd.semantics``): which formula each method computes, as one coherent set.

* ``xbench`` (default): xbench's own choices, documented in each loss (chunk mean of
  probabilities, P-KL over reachable top-mass columns, GOLD/H-KL adaptive weights, no T^2 on
  uld/gold/hkl).
* ``authors``: the formulas of the authors' NeMo RL code, which produced the paper's Table 1
  (``shared/reference/xtoken_paper.md``, "The authors' code"). Use it to reproduce the paper.
* ``trl``: TRL 1.16's GOLDTrainer losses (``ULDLoss`` with the "bayesian" merge, hybrid with
  adaptive weights) for ``gold`` and ``uld`` only; TRL has no P-KL, H-KL or X-Token. TRL's
  default "observed" merge is not offered: it scores token p with the logits at p, which predict
  p + 1 (reading chunk logits one position late); "bayesian" is TRL's own fix for that.

:data:`FORMULAS` holds one line per method and preset (README table, run metadata).
:func:`loss_kwargs` turns a preset into the keyword arguments of ``kd`` or the
:class:`xbench.losses.view.ChunkOptions` fields of a chunk loss; the losses stay pure functions of
tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AUTHORS_UNCOMMON_TOP",
    "FORMULAS",
    "PRESETS",
    "exact_pairs_from_w",
    "loss_kwargs",
    "preset_fixes",
]

PRESETS = ("xbench", "authors", "trl")
# The authors' l1_uncommon compares the top m = min(|U_S|, |U_T|, 8192) sorted ranks.
AUTHORS_UNCOMMON_TOP = 8192

FORMULAS: dict[str, dict[str, str]] = {
    "xbench": {
        "kd": "T^2 KL(p_T||p_S) per token on the teacher's per-position top-k, token mean",
        "uld": "sorted L1 of chunk-mean probabilities, zero-padded, no T^2",
        "gold": "w_c KL on exact string pairs + w_u ULD, chunk-mean probs, w_c = |pairs|/V_T",
        "pkl": "T^2 KL(p_T|S || W^T p_S|S), S = top-k reachable ids by chunk mass, both renormed",
        "hkl": "gold's hybrid on relaxed W pairs (top weight >= 0.6), adaptive weights",
        "xtoken": "alpha H-KL + (1 - alpha) P-KL, shared chunk distributions",
    },
    "authors": {
        "kd": "T^2 KL within k ids by the micro-batch's max teacher logit, token mean",
        "uld": "T^2 sorted L1 of chunk log-mean probs, top 8192 ranks (their l1 rule)",
        "gold": "T^2 (KL on W's one-hot pairs + L1 of top 8192 uncommon ranks), chunk log-means",
        "pkl": "T^2 KL(mean log p_T|S || renorm W^T mean p_S|S), S = top-k max-logit ids",
        "hkl": "gold's formula on relaxed W pairs (top weight >= 0.6), weights 1:1",
        "xtoken": "alpha H-KL + (1 - alpha) P-KL, each with the authors' formula",
    },
    "trl": {
        "uld": "sorted L1 of chain-rule (bayesian-merge) chunk probs, zero-padded, no T^2",
        "gold": "TRL ULDLoss hybrid: JSD_beta on string pairs + ULD, bayesian merge, adaptive",
    },
}

# Knobs a preset decides (a non-default value is refused under that preset).
_FIXED: dict[str, tuple[str, ...]] = {
    "xbench": (),
    "authors": ("chunk_method", "gold_weights", "gold_semantics"),
    "trl": ("chunk_method", "gold_semantics"),
}


def preset_fixes(semantics: str) -> tuple[str, ...]:
    """The ``kd.*`` knobs whose value the preset decides."""
    return _FIXED[semantics]


def loss_kwargs(semantics: str, method: str) -> dict[str, Any]:
    """What realises the preset: keyword arguments of ``kd``, ``ChunkOptions`` fields of the
    chunk losses (``ChunkOptions(**loss_kwargs(...))``).

    Raises:
        ValueError: the preset does not define ``method``.
    """
    if semantics not in PRESETS:
        raise ValueError(f"kd.semantics={semantics!r} is unknown; use one of {PRESETS}.")
    if method not in FORMULAS[semantics]:
        raise ValueError(
            f"kd.semantics={semantics} has no {method} (TRL has only gold and uld); "
            "use kd.semantics=xbench or authors for this teacher."
        )
    if semantics == "xbench":
        return {}
    if semantics == "trl":
        return {"chunk_method": "chain"}
    hybrid = {"chunk_method": "logmean", "truncate": AUTHORS_UNCOMMON_TOP, "t2": True}
    return {
        "kd": {"top_k_scope": "microbatch"},
        "uld": hybrid,
        "gold": {**hybrid, "weights": (1.0, 1.0)},
        "hkl": {**hybrid, "weights": (1.0, 1.0)},
        "pkl": {"authors": True},
        "xtoken": {"authors": True},
    }[method]


def exact_pairs_from_w(indices: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """The authors' GOLD map read from W: a student row is common when its top weight is 1.0 and
    every other slot is empty; several rows on one teacher id -> the lowest student id wins.

    Args:
        indices, weights: (V_S, K) W.

    Returns:
        ``(student_ids, teacher_ids)``, int64, sorted by student id.
    """
    w = weights.detach().float()
    top, slot = w.max(1)
    nonzero = (w > 0).sum(1)
    rows = torch.nonzero((top == 1.0) & (nonzero == 1)).squeeze(1)
    teach = indices.long().gather(1, slot[:, None]).squeeze(1)[rows]
    # rows are ascending, so the first occurrence of each teacher id is its lowest student id
    _, first = np.unique(teach.cpu().numpy(), return_index=True)
    keep = torch.from_numpy(np.sort(first)).to(rows.device)
    return rows[keep], teach[keep]
