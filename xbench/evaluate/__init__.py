"""Evaluation with lm-evaluation-harness: ``harness`` (suites, task checks, results.json) and
``tasks/`` (the offline GSM8K / MMLU tasks; plug-ins register their own task folders).

``python -m xbench.evaluate`` scores a run directory, a checkpoint, a registry asset or a Hub id;
models load through the engine's one loader (:mod:`xbench.engine.models`).
"""
