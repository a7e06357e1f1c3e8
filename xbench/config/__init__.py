"""Typed configs (``schema``, registered with Hydra's ConfigStore), ``validate(cfg)`` and ``cells``
(an experiment's cell resolved to its teachers)."""

from xbench.config.schema import CELL_GROUPS, KD_METHODS
from xbench.config.validate import ConfigError, validate, validate_eval, validate_pair
from xbench.errors import UserError

__all__ = [
    "CELL_GROUPS",
    "KD_METHODS",
    "ConfigError",
    "UserError",
    "validate",
    "validate_eval",
    "validate_pair",
]
