"""Hydra plugin: the xbench sweeper (lives in the ``hydra_plugins`` namespace as Hydra requires)."""
