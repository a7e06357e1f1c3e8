"""Distillation losses: pure tensor functions returning sum-reduced :class:`LossOutput`.

``get(name)`` returns a loss from the table below: ``ce``, ``kd`` (same tokenizer), ``uld``,
``gold``, ``hkl``, ``pkl``, ``xtoken`` (chunk-level, cross-tokenizer; ``gold`` and ``hkl`` are one
function, they differ in the pairs passed in). ``register`` adds a user's own loss.

The house (a module imports torch, numpy and earlier modules of this package only; none imports
the package itself, so there is no cycle):

* ``base``: :class:`LossOutput` and ``sliced_sums``; ``view``: :class:`ChunkView` (the batch's
  aligned chunks and ids), :class:`ChunkOptions` (the chunk losses' shared knobs, defaults stated
  once) and the chunk index.
* ``ce``, ``kd``: same-tokenizer losses, ``loss(student_logits, [teacher_logits,] labels, *, ...)``.
* ``chunks``: chunk distributions and the generic slice-by-slice driver; ``sorting``: ULD's
  sorted L1; ``uld``, ``gold`` (gold and hkl), ``pkl`` (and :class:`LearnableProjection`),
  ``xtoken``: each ``loss(student_logits, teacher_logits, view, [pairs], [projection], *,
  options)``.
* ``ops``, ``hybrid_ops``, ``projection_ops``: the closed-form kernels (same values and gradients
  as the generic path, tested against it).
* ``presets`` (``kd.semantics`` -> loss options), ``combine`` (CE + KD mixing, several teachers)
  and ``options`` (config-time rules for the ``kd:``/``mix:`` knobs; these two also read the
  method vocabulary of ``xbench.vocab``, and ``options`` reads configs through ``xbench.io``).
"""

from collections.abc import Callable

from xbench.losses.base import LossOutput
from xbench.losses.ce import ce_loss
from xbench.losses.gold import hybrid_loss
from xbench.losses.kd import kd_loss
from xbench.losses.pkl import LearnableProjection, pkl_loss
from xbench.losses.uld import uld_loss
from xbench.losses.view import ChunkOptions, ChunkView
from xbench.losses.xtoken import xtoken_loss

__all__ = [
    "ChunkOptions",
    "ChunkView",
    "LearnableProjection",
    "LossOutput",
    "available",
    "get",
    "register",
]

Loss = Callable[..., LossOutput]

# name -> loss; gold and hkl are one function (the pairs differ, built in xbench.tokenpair).
_LOSSES: dict[str, Loss] = {
    "ce": ce_loss,
    "kd": kd_loss,
    "uld": uld_loss,
    "gold": hybrid_loss,
    "hkl": hybrid_loss,
    "pkl": pkl_loss,
    "xtoken": xtoken_loss,
}


def register(name: str) -> Callable[[Loss], Loss]:
    """Decorator: add a user's loss under ``name`` (names are unique)."""

    def deco(fn: Loss) -> Loss:
        if name in _LOSSES and _LOSSES[name] is not fn:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = fn
        return fn

    return deco


def get(name: str) -> Loss:
    """Return the loss registered as ``name``.

    Raises:
        KeyError: with the list of known names when ``name`` is unknown.
    """
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(_LOSSES)}") from None


def available() -> list[str]:
    """Sorted names of all registered losses."""
    return sorted(_LOSSES)
