"""Sweeps: every cell of an experiment as a Hydra multirun on submitit (SLURM) or locally.

``cells`` resolves one cell's teachers from the zoo; ``launch`` runs a cell into its run
directory (train, evaluate, meta.json) and ends the sweep in a report. ``python -m xbench.sweep``.
"""
