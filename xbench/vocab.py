"""The names a config may use for the objective's enumerated knobs, defined once.

Torch-free on purpose: ``xbench.config`` checks a config against these before anything heavy is
imported, and the losses (``xbench.losses.combine``, ``xbench.losses.options``) use the same
tuples at run time.
"""

from __future__ import annotations

# A teacher's method (cells.NAME.teachers[i].method): config name = registry key = leaderboard
# column. ce (no teacher) and base (no training) are cell kinds, not teacher methods.
KD_METHODS = ("kd", "uld", "gold", "pkl", "hkl", "xtoken")
# Families of KD_METHODS by what their loss needs (the engine prepares it, options check knobs):
CROSS_TOKENIZER = ("uld", "gold", "pkl", "hkl", "xtoken")  # chunk-level, any tokenizer pair
HYBRID = ("gold", "hkl", "xtoken")  # a common set of token pairs + ULD on the rest
USES_W = ("pkl", "hkl", "xtoken")  # the projection W (hkl: its relaxed pairs only)
RELAXED_PAIRS = ("hkl", "xtoken")  # common pairs read from W (kd.hkl_threshold)
LEARNS_W = ("pkl", "xtoken")  # W's values are trained (kd.learn_w)
# Rows of a leaderboard, in order: the two cell kinds, then the teacher methods.
LEADERBOARD_METHODS = ("base", "ce", *KD_METHODS)
# mix.mode: dynamic scaling sg(|CE|/|KD|) (the paper's) or fixed weights.
MIX_MODES = ("dynamic", "fixed")
# kd.multi_teacher: static weights (paper default), softmax over per-batch teacher scores (-CE,
# -entropy, max-prob), the best teacher per batch, or one KD against the weighted average of
# same-vocabulary teachers' logits (handled by the objective, which averages before the loss).
MULTI_TEACHER = ("static", "softmax_ce", "softmax_entropy", "softmax_maxprob", "best", "logit_avg")
# kd.kl: the divergence direction (jsd takes kd.beta).
KL_DIRECTIONS = ("forward", "reverse", "jsd")
