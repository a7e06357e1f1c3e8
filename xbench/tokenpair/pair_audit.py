"""The tokenizer-pair audit of one student against one or more teachers (:func:`run_pair`).

For each teacher (one name or a list), builds (or loads from the cache) the projection W of the
pair, audits the pair on a GSM8K sample and writes ``pair_audit.json`` and ``pair_audit.md`` to
``out_dir/<student>__<teacher>/``; then writes the paper's Table 8 with a column per teacher to
``out_dir/<student>__table8.{md,json}``. ``python -m xbench.pair`` (``xbench/pair.py``, the Hydra
entry point) runs it and prints the table (see ``conf/pair.yaml``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xbench.io import write_json, write_text

__all__ = ["run_pair", "sample_corpus"]

_FIELDS = (
    "student",
    "teacher",
    "out_dir",
    "sample_size",
    "seed",
    "rank",
    "reverse_pass",
    "threshold",
    "align_method",
)


def sample_corpus(sample_size: int, seed: int) -> list[str]:
    """GSM8K test rows (question, newline, answer), a seeded sample in file order.

    Args:
        sample_size: Number of rows (all rows when the test set is smaller).
        seed: Seed of the row sample.

    Returns:
        The texts the audit aligns.
    """
    from xbench.assets import load_gsm8k_test

    rows = load_gsm8k_test()
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(sample_size, len(rows))))
    return [f"{rows[i]['question']}\n{rows[i]['answer']}" for i in picked]


def _check(cfg: Mapping[str, Any]) -> dict[str, Any]:
    c = dict(cfg)
    missing = [f for f in _FIELDS if f not in c]
    if missing:
        raise ValueError(f"pair config lacks {missing}: start from conf/pair.yaml.")
    if isinstance(c["teacher"], str):
        c["teacher"] = [c["teacher"]]
    teachers = c["teacher"]
    if not teachers or not all(isinstance(t, str) and t for t in teachers):
        raise ValueError(
            f"teacher={teachers!r}: set it to a tokenizer name or a list of them, e.g. "
            "teacher=qwen3 or teacher=[qwen3,phi4like]."
        )
    for f in ("student", "out_dir"):
        if not isinstance(c[f], str) or not c[f]:
            raise ValueError(f"{f}={c[f]!r}: set it to a non-empty string.")
    for f, low in (("sample_size", 0), ("seed", 0), ("rank", 1)):
        if isinstance(c[f], bool) or not isinstance(c[f], int) or c[f] < low:
            raise ValueError(f"{f}={c[f]!r}: set it to an integer >= {low}.")
    return c


def run_pair(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Audit one student against one or more teachers and write the reports.

    Args:
        cfg: Fields of ``conf/pair.yaml`` as plain values (student, teacher: a name or a list,
            out_dir, sample_size, seed, rank, reverse_pass, threshold, align_method).

    Returns:
        ``{"teachers": {short name: audit report}, "table8": markdown}``; each report is also
        written to ``out_dir/<student>__<teacher>/pair_audit.{json,md}``, the table to
        ``out_dir/<student>__table8.{md,json}``.
    """
    from xbench.assets import load_tokenizer
    from xbench.tokenpair.audit import render_markdown, render_table8

    c = _check(cfg)
    student = load_tokenizer(c["student"])
    texts = sample_corpus(c["sample_size"], c["seed"]) if c["sample_size"] else []
    out = Path(c["out_dir"])
    reports = {}
    for name in c["teacher"]:
        report = _audit_one(student, load_tokenizer(name), texts, c)
        # Name the pair by the config's names, not the cache paths the tokenizers came from.
        report["student"]["name"], report["teacher"]["name"] = c["student"], name
        report["config"] = {**c, "teacher": name}
        # Keyed (and titled in Table 8) by the short name: a directory's base name, a Hub id's
        # model part.
        reports[_slug(name)] = report
        pair_dir = out / f"{_slug(c['student'])}__{_slug(name)}"
        write_json(pair_dir / "pair_audit.json", report)
        write_text(pair_dir / "pair_audit.md", render_markdown(report))
    table = render_table8(_slug(c["student"]), reports)
    stem = out / f"{_slug(c['student'])}__table8"
    write_text(stem.with_suffix(".md"), table)
    write_json(
        stem.with_suffix(".json"),
        {
            n: {"coverage": r["coverage"], "recommendation": r["recommendation"]}
            for n, r in reports.items()
        },
    )
    return {"teachers": reports, "table8": table}


def _slug(name: str) -> str:
    """A path-safe name for a tokenizer given as a name, a directory or a Hub id."""
    return Path(name).name or name.replace("/", "_")


def _audit_one(student, teacher, texts: list[str], c: dict[str, Any]) -> dict[str, Any]:
    """Build or load W for the pair and audit it."""
    from xbench.tokenpair.audit import audit_pair
    from xbench.tokenpair.projection import ProjectionConfig, load_or_build

    proj_cfg = ProjectionConfig(rank=c["rank"], reverse_pass=bool(c["reverse_pass"]))
    proj = load_or_build(student, teacher, proj_cfg)
    return audit_pair(
        student,
        teacher,
        texts,
        proj,
        align_method=str(c["align_method"]),
        threshold=float(c["threshold"]),
    )
