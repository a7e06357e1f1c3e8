"""Distillation losses: pure tensor functions returning sum-reduced :class:`LossOutput`.

``get(name)`` returns a registered loss: ``ce``, ``kd`` (same tokenizer), ``uld``, ``gold``,
``pkl``, ``hkl``, ``xtoken`` (chunk-level, cross-tokenizer). See each function's docstring.
"""

from xbench.losses import ce, gold, hkl, kd, pkl, uld, xtoken  # noqa: F401  (registers)
from xbench.losses.base import LossOutput, available, get, register
from xbench.losses.pkl import LearnableProjection

__all__ = ["LearnableProjection", "LossOutput", "available", "get", "register"]
