"""Shared names of the report: column lists, orders, aliases, the error type and small helpers.

Split out of ``xbench.report``; that module re-exports everything here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from xbench import REFERENCE_DIR
from xbench.vocab import LEADERBOARD_METHODS

TIDY_COLUMNS = [
    "run",
    "experiment",
    "student",
    "teachers",
    "method",
    "alpha",
    "rank",
    "semantics",
    "seed",
    "task",
    "metric",
    "value",
    "stderr",
    "status",
]
# alpha and rank ride along so that curves of different sweep points are never averaged together.
CURVE_COLUMNS = ["run", "method", "teachers", "alpha", "rank", "seed", "step", "key", "value"]
# semantics: the kd.semantics preset (xbench | authors | trl) whose formulas produced the row;
# rows of different presets are never averaged together and the leaderboard says when it mixes them.
KEY_COLUMNS = ["experiment", "student", "teachers", "method", "alpha", "rank", "semantics"]
AVG = "avg"
DELTA = "delta_vs_gold"
NO_TEACHER = "none"
# A breakdown of a task into classes is reported as the task "TASK@CLASS" (the miniature's
# exact match per answer length, mini_arith@len1 ..): shown beside its task, never averaged.
BREAKDOWN_SEP = "@"
# Metrics that are probes, not benchmark scores: shown as columns, never part of the headline avg.
PROBE_METRICS = ("answer_prob",)
# Column order of the paper's Table 1; other tasks follow alphabetically.
BENCHMARK_ORDER = ("mmlu", "gsm8k", "math", "winogrande", "hellaswag")
METHOD_ORDER = LEADERBOARD_METHODS
PAPER_EXPERIMENT = "llama1b_vs_gold"
REFERENCE_CSV = REFERENCE_DIR / "xtoken_table1.csv"
REFERENCE_STUDENT = "llama-3.2-1b"
# lm-eval task names that stand for a paper column.
TASK_ALIASES = {"minerva_math": "math", "hendrycks_math": "math", "mmlu_flan": "mmlu"}
# Config or Hub spellings of the paper's teachers -> the reference CSV's spelling.
MODEL_ALIASES = {
    "phi-4-mini": "phi-4-mini-instruct",
    "phi4-mini": "phi-4-mini-instruct",
    "phi4-mini-instruct": "phi-4-mini-instruct",
    "qwen3-4b-base": "qwen3-4b",
    "llama3.2-3b": "llama-3.2-3b",
    "llama-3.2-3b-instruct": "llama-3.2-3b",
    "llama3-2-3b": "llama-3.2-3b",
}


def is_breakdown(task: str) -> bool:
    """Whether a tidy task is a per-class breakdown (``TASK@CLASS``) of another task."""
    return BREAKDOWN_SEP in task


class ReportError(ValueError):
    """A bad input to the report, described in one sentence."""


def fmt_axis(v: Any) -> str:
    if pd.isna(v):
        return "–"
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"
