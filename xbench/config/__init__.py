"""Typed configs (``schema``, registered with Hydra's ConfigStore) and ``validate(cfg)``."""

from xbench.config.schema import CELL_GROUPS, KD_METHODS
from xbench.config.validate import ConfigError, UserError, validate, validate_eval, validate_pair

__all__ = [
    "CELL_GROUPS",
    "KD_METHODS",
    "ConfigError",
    "UserError",
    "validate",
    "validate_eval",
    "validate_pair",
]
