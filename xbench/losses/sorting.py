"""ULD's distance: sorted-probability L1 between rows, with its closed-form sub-gradient.

:func:`sorted_l1` is differentiable (autograd); :func:`sorted_l1_and_sign` returns the value and
the gradient w.r.t. its first argument without autograd (the hybrid kernel's form).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["sorted_l1", "sorted_l1_and_sign"]


def _sort_desc(x: Tensor, want_index: bool) -> tuple[Tensor, Tensor | None]:
    """Row-wise descending sort. On CPU numpy's vectorized sort is several times faster than
    ``torch.sort`` (measured 6x values-only, 2.7x argsort, 1 thread). Equal values (common: a
    float32 row of 128k probabilities holds thousands of exact ties) come out in descending
    column order; which tied entry takes which rank changes only the sub-gradient."""
    if x.device.type != "cpu":
        v, i = torch.sort(x, dim=-1, descending=True)
        return v, (i if want_index else None)
    a = x.detach().float().contiguous().numpy()
    if not want_index:
        return torch.from_numpy(np.ascontiguousarray(np.sort(a, axis=-1)[:, ::-1])), None
    # The argsort as one value sort of int64 keys (order-preserving float32 bits << 32 | column):
    # 2x faster than np.argsort + take_along_axis (measured 77-107 vs 185-203 ms, 27 x 128,256).
    key = _order_bits(a.view(np.int32)).astype(np.int64) << 32
    key |= np.arange(a.shape[1], dtype=np.int64)
    key.sort(axis=-1)
    key = key[:, ::-1]
    values = _order_bits((key >> 32).astype(np.int32)).view(np.float32)
    return torch.from_numpy(np.ascontiguousarray(values)), torch.from_numpy(key & 0xFFFFFFFF)


def _order_bits(bits: np.ndarray) -> np.ndarray:
    """float32 bit patterns (as int32) <-> int32 keys in the floats' order (an involution:
    negative floats have their magnitude bits flipped)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


class _SortedL1(torch.autograd.Function):
    """Row-wise L1 between descending-sorted vectors, zero-padded to a common length.

    Backward: d/d a_i = sign(sa_r - sb_r) at the rank r of a_i (the same sub-gradient as autograd
    through ``torch.sort`` + ``l1_loss``, sign(0) = 0), scattered back through the permutation.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, truncate: int | None = None) -> Tensor:
        sa, ia = _sort_desc(a, a.requires_grad)
        sb, ib = _sort_desc(b, b.requires_grad)
        sa, sb = sa.to(a.device), sb.to(b.device)
        m = min(sa.shape[1], sb.shape[1])
        if truncate is not None:  # compare the top m ranks only; the tails are dropped
            m = min(m, truncate)
            sa, sb = sa.clone(), sb.clone()
            sa[:, m:] = 0.0
            sb[:, m:] = 0.0
        diff = sa[:, :m] - sb[:, :m]  # (n, m)
        # Padding the shorter side with zeros makes each surplus entry contribute |value|
        # (truncated: the tails were zeroed above, so they contribute nothing).
        out = diff.abs().sum(1) + sa[:, m:].abs().sum(1) + sb[:, m:].abs().sum(1)  # (n,)
        ctx.save_for_backward(diff, sa[:, m:], sb[:, m:], *(t for t in (ia, ib) if t is not None))
        ctx.has = (ia is not None, ib is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        diff, ta, tb, *idx = ctx.saved_tensors
        sign = diff.sign()  # (n, m)
        g = grad[:, None]
        grads: list[Tensor | None] = [None, None]
        it = iter(idx)
        for side, (has, tail, s) in enumerate(((ctx.has[0], ta, sign), (ctx.has[1], tb, -sign))):
            if not has:
                continue
            perm = next(it).to(grad.device)
            gs = torch.cat([s, tail.sign()], dim=1) * g  # (n, V_side) in sorted order
            grads[side] = torch.zeros_like(gs).scatter_(1, perm, gs)
        return grads[0], grads[1], None


def sorted_l1(a: Tensor, b: Tensor, truncate: int | None = None) -> Tensor:
    """ULD distance per row: sum_r |sort_desc(a)_r - sort_desc(b)_r|, shorter side zero-padded.

    With ``truncate`` = M: only ranks r < m = min(Va, Vb, M) are compared, no padding (the
    authors' ``l1_uncommon``, M = 8192).

    Args:
        a: (n, Va) non-negative (probabilities, possibly a sub-vector).
        b: (n, Vb).
        truncate: compare the top ``truncate`` ranks only (None: all, zero-padded).

    Returns:
        (n,) distances; identity-blind (any permutation of a row gives the same value); 0 iff the
        two rows are equal as multisets up to zero padding.
    """
    return _SortedL1.apply(a.float(), b.float(), truncate)


def sorted_l1_and_sign(
    a: Tensor, b: Tensor, truncate: int | None = None, want_sign: bool = True
) -> tuple[Tensor, Tensor | None]:
    """:func:`sorted_l1` without autograd, plus the sub-gradient of each row w.r.t. ``a``.

    Args:
        a: (n, Va) float32, non-negative; b: (n, Vb) float32; truncate: as :func:`sorted_l1`.
        want_sign: also return the gradient (only ``a`` is argsorted for it; ``b`` is sorted
            by value only).

    Returns:
        ((n,) distances, (n, Va) d distance / d a or None): sign(sa_r - sb_r) at the rank r of
        each entry, sign(a_i) on the zero-padded tail, 0 on a truncated tail (``_SortedL1``'s).
    """
    sa, ia = _sort_desc(a, want_sign)
    sb, _ = _sort_desc(b, False)
    sa, sb = sa.to(a.device), sb.to(b.device)
    m = min(sa.shape[1], sb.shape[1])
    if truncate is not None:
        m = min(m, truncate)
    diff = sa[:, :m] - sb[:, :m]  # (n, m)
    out = diff.abs().sum(1)
    if truncate is None:  # zero padding: each surplus entry contributes |value|
        out += sa[:, m:].abs().sum(1) + sb[:, m:].abs().sum(1)
    if not want_sign:
        return out, None
    assert ia is not None
    s = sa.sign_() if truncate is None else sa.zero_()  # the tail's sign, in sorted order
    s[:, :m] = diff.sign_()
    return out, torch.empty_like(s).scatter_(1, ia.to(a.device), s)
