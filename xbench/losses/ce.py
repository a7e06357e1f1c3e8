"""Next-token cross-entropy, sum-reduced."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xbench.losses.base import LossOutput, sliced_sums

__all__ = ["ce_loss", "shifted_valid_rows"]


def shifted_valid_rows(labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Flat logits rows and targets of the shifted next-token objective.

    The logits at position p predict ``labels[:, p + 1]``; a row is valid when that label is not
    ``ignore_index``. Returns ``(rows, targets)``: (N,) flat row ``b * T + p`` and (N,) target id.
    """
    T = labels.shape[1]  # labels: (B, T)
    nxt = labels[:, 1:]  # (B, T-1)
    b, p = torch.nonzero(nxt != ignore_index, as_tuple=True)
    return b * T + p, nxt[b, p].long()


def ce_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = 1024,
    use_checkpoint: bool = True,
) -> LossOutput:
    """Next-token cross-entropy  CE = sum_{valid p} -log softmax(z_p)[y_{p+1}].

    Args:
        logits: (B, T, V) student logits; position p predicts ``labels[:, p+1]``.
        labels: (B, T) token ids, ``ignore_index`` = not a target (prompt, padding).
        ignore_index: label value excluded from the loss.
        chunk_size: positions per slice (peak memory ~ chunk_size * V); None = all at once.
        use_checkpoint: checkpoint slices under autograd.

    Returns:
        LossOutput(total = sum over valid targets, count = number of valid targets,
        components = {"ce": total}). No temperature. All-masked -> total 0, count 0.
    """
    rows, targets = shifted_valid_rows(labels, ignore_index)
    flat = logits.reshape(-1, logits.shape[-1])  # (B*T, V)

    def run(start: int, end: int, z: Tensor) -> tuple[Tensor]:
        zz = z[rows[start:end]].float()  # (n, V)
        return (F.cross_entropy(zz, targets[start:end], reduction="sum"),)

    out = sliced_sums(run, int(rows.numel()), chunk_size, (flat,), use_checkpoint)
    total = out[0] if out is not None else flat.sum() * 0.0
    count = torch.tensor(int(rows.numel()), device=logits.device)
    return LossOutput(total, count, {"ce": total.detach()})
