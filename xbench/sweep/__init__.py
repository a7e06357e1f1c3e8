"""Sweeps: every cell of an experiment as a Hydra multirun on submitit (SLURM) or locally.

``launch`` runs one cell into its run directory (train, evaluate, meta.json), lets plug-ins build
what all cells share first, and ends the sweep in a report; ``python -m xbench.sweep``. The
sweeper that expands cells and seeds lives in ``hydra_plugins/xbench_sweeper``.
"""
