"""The loss output record and the slice-by-slice sum of the same-tokenizer losses.

Every loss in ``xbench.losses`` returns a :class:`LossOutput` holding *sums* over valid units
(tokens for same-tokenizer losses, aligned chunks for cross-tokenizer losses) and their number.
The trainer divides by the global unit count of the whole optimizer step, so the normalization does
not change with gradient accumulation or world size (docs/contracts.md, "Losses").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LossOutput", "sliced_sums"]


@dataclass
class LossOutput:
    """Sum-reduced loss of one micro-batch.

    Attributes:
        total: scalar, sum of the per-unit loss over valid units (carries the graph).
        count: scalar long, number of valid units (tokens or chunks).
        components: name -> detached scalar sum, for logging (divide by ``count`` to get a mean).
    """

    total: Tensor
    count: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)

    def mean(self) -> Tensor:
        """``total / max(count, 1)``: the local mean (0 when nothing is valid, never NaN)."""
        return self.total / self.count.clamp_min(1).to(self.total.dtype)

    def __add__(self, other: LossOutput) -> LossOutput:
        """Sum of two outputs over disjoint unit sets (e.g. two halves of a batch)."""
        keys = set(self.components) | set(other.components)
        zero = torch.zeros((), dtype=self.total.dtype)
        comps = {
            k: self.components.get(k, zero) + other.components.get(k, zero) for k in sorted(keys)
        }
        return LossOutput(self.total + other.total, self.count + other.count, comps)

    def scaled(self, weight: float | Tensor) -> LossOutput:
        """The same output with total and components multiplied by ``weight`` (count unchanged)."""
        return LossOutput(
            self.total * weight,
            self.count,
            {k: v * weight for k, v in self.components.items()},
        )


def sliced_sums(
    fn: Callable[..., tuple[Tensor, ...]],
    n_units: int,
    chunk_size: int | None,
    tensors: tuple[Tensor, ...],
    use_checkpoint: bool = True,
) -> tuple[Tensor, ...] | None:
    """Evaluate ``fn(start, end, *tensors)`` over unit slices and sum its scalar outputs.

    Why: a loss over B*T positions and a 150k vocabulary holds several (B*T, V) temporaries; slicing
    the units keeps them at (chunk_size, V). Under autograd each slice is wrapped in a
    non-reentrant activation checkpoint, so the saved tensors of a slice are only its inputs (views
    of the logits) and the slice is recomputed in backward: peak memory grows with ``chunk_size``
    (plus the logits' own gradient), at the price of one extra forward of the loss arithmetic.

    Args:
        fn: ``fn(start, end, *tensors) -> tuple of scalar tensors`` for units ``[start, end)``.
        n_units: number of units.
        chunk_size: units per slice; ``None`` or ``<= 0`` means one slice.
        tensors: tensor arguments forwarded to ``fn`` (checkpoint tracks their gradients).
        use_checkpoint: checkpoint slices when autograd is recording.

    Returns:
        Element-wise sums of ``fn``'s outputs, or ``None`` when ``n_units == 0``.
    """
    from torch.utils.checkpoint import checkpoint

    if n_units == 0:
        return None
    step = n_units if not chunk_size or chunk_size <= 0 else chunk_size
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    acc: tuple[Tensor, ...] | None = None
    for start in range(0, n_units, step):
        end = min(start + step, n_units)
        if use_checkpoint and needs_grad and step < n_units:
            out = checkpoint(fn, start, end, *tensors, use_reentrant=False)
        else:
            out = fn(start, end, *tensors)
        acc = out if acc is None else tuple(a + o for a, o in zip(acc, out, strict=True))
    return acc
