"""What the two closed-form kernels (:mod:`.hybrid_ops`, :mod:`.projection_ops`) share: the size
of their working blocks, their setup (chunk indices, flat logits, slices) and the student-logit
gradient buffer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xbench.losses.chunks import token_slices
from xbench.losses.view import ChunkIndex, ChunkMethod, ChunkView

__all__ = ["KernelPlan", "block_elems", "kernel_plan", "row_grad_buffer", "scaled_rows_into"]

# Dense passes run over blocks of about this many elements (4 MiB of float32): temporaries this
# small are reused by the allocator instead of page-faulted in afresh for every slice, which on a
# CPU costs more than the arithmetic itself (measured: logsumexp over 256 x 128k rows 0.53 s in one
# block, 0.30 s in blocks of 8 rows).
# On an accelerator there is no page-faulting and each block costs kernel launches, so blocks
# are 64x larger there (a student slice is then bounded by ``chunk_size`` alone).
_BLOCK_ELEMS = 1 << 20


def block_elems(device: torch.device) -> int:
    """Elements of one working block on ``device`` (both kernels size their slices by it)."""
    return _BLOCK_ELEMS if device.type == "cpu" else 64 * _BLOCK_ELEMS


def row_grad_buffer(flat: Tensor, index: ChunkIndex) -> Tensor:
    """An uninitialised (N, V) gradient for ``flat`` whose rows no chunk reads are 0: the kernels
    write every read row exactly once (a position predicts one token), so nothing else is
    zero-filled."""
    g = torch.empty_like(flat)
    unread = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
    unread[index.pred_row] = False
    return g.index_fill_(0, torch.nonzero(unread).squeeze(1), 0)


def scaled_rows_into(flat: Tensor, sel: Tensor, temperature: float, buf: Tensor) -> Tensor:
    """(P, V) float32 ``flat[sel] / T`` written into the front of the reused block ``buf``."""
    v = flat.shape[1]
    y = buf[: sel.numel() * v].view(sel.numel(), v)
    if flat.dtype == y.dtype:
        torch.index_select(flat, 0, sel, out=y)
    else:  # bf16 logits: gather, then widen into the float32 block
        y.copy_(flat.index_select(0, sel))
    if temperature != 1.0:
        y.div_(temperature)
    return y


@dataclass(frozen=True)
class KernelPlan:
    """One kernel call's setup.

    Attributes:
        s_idx, t_idx: both sides' chunk indices.
        s_flat: (B*Ts, V_S) detached student logits; t_flat: (B*Tt, V_T) detached teacher logits.
        slices: consecutive chunk ranges (:func:`xbench.losses.chunks.token_slices`).
    """

    s_idx: ChunkIndex
    t_idx: ChunkIndex
    s_flat: Tensor
    t_flat: Tensor
    slices: list[tuple[int, int]]

    def most_rows(self, index: ChunkIndex) -> int:
        """The most predicting rows of ``index``'s side in one slice (sizes the reused block)."""
        return max(int(index.offsets[e] - index.offsets[b]) for b, e in self.slices)


def kernel_plan(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    chunk_method: ChunkMethod,
    chunk_size: int | None,
    width: int,
) -> KernelPlan | None:
    """Index both sides and slice the chunks; None when no chunk is valid.

    A slice holds at most ``chunk_size`` predicting rows per side and, whatever ``chunk_size``,
    at most ``4 * block_elems / width`` of them, so a side's (rows, width) float32 block stays
    ~16 MiB on CPU (``width``: the widest row the kernel materialises).
    """
    s_idx, t_idx = view.indices(chunk_method)
    if s_idx.num_chunks == 0:
        return None
    rows_cap = max(1, 4 * block_elems(student_logits.device) // width)
    max_rows = rows_cap if not chunk_size or chunk_size <= 0 else min(chunk_size, rows_cap)
    return KernelPlan(
        s_idx,
        t_idx,
        student_logits.detach().reshape(-1, student_logits.shape[-1]),
        teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]),
        token_slices(s_idx, t_idx, max_rows),
    )
