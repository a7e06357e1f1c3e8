"""``python -m xbench.pair student=llama3 teacher=[qwen3,phi4like]``: the tokenizer-pair audit.

For each teacher (one name or a list), builds (or loads from the cache) the projection W of the
pair, audits the pair on a GSM8K sample and writes ``pair_audit.json`` and ``pair_audit.md`` to
``out_dir/<student>__<teacher>/``; then writes the paper's Table 8 with a column per teacher to
``out_dir/<student>__table8.{md,json}`` and prints it (see ``conf/pair.yaml``).

The entry point is the thin ``xbench/pair.py``; the code lives here, beside the audit it runs.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xbench.io import write_json, write_text

__all__ = ["main", "run_pair", "sample_corpus"]

_FIELDS = ("student", "teacher", "out_dir", "sample_size", "seed", "rank", "reverse_pass")


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


def _check(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
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


def run_pair(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Audit one student against one or more teachers and write the reports.

    Args:
        cfg: Fields of ``conf/pair.yaml`` (student, teacher: a name or a list, out_dir,
            sample_size, seed, rank, reverse_pass, threshold, align_method).

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
    from xbench.tokenpair.audit import RELAXED_THRESHOLD, audit_pair
    from xbench.tokenpair.projection import ProjectionConfig, load_or_build

    proj_cfg = ProjectionConfig(rank=c["rank"], reverse_pass=bool(c["reverse_pass"]))
    proj = load_or_build(student, teacher, proj_cfg)
    return audit_pair(
        student,
        teacher,
        texts,
        proj,
        align_method=str(c.get("align_method", "offset")),
        threshold=float(c.get("threshold", RELAXED_THRESHOLD)),
    )


def _help() -> str:
    from xbench.assets import OFFLINE_TOKENIZERS

    return (
        "usage: python -m xbench.pair student=TOKENIZER teacher=TOKENIZER|[T1,T2,...]\n"
        "       [key=value ...]\n"
        "  Audits a tokenizer pair (W, alignment and numeral statistics on a GSM8K sample) and\n"
        "  writes out_dir/<student>__<teacher>/pair_audit.{json,md} with a loss recommendation\n"
        "  (P-KL or H-KL), and one Table-8 view with a column per teacher\n"
        "  (out_dir/<student>__table8.md).\n"
        f"  TOKENIZER: an offline asset ({', '.join(OFFLINE_TOKENIZERS)}), a directory or a Hub"
        " id.\n"
        "  keys (conf/pair.yaml): out_dir, sample_size, seed, rank, reverse_pass, threshold,\n"
        "  align_method (offset | dp).\n"
        "XBENCH_DEBUG=1 prints the full traceback of an error."
    )


def _cli(argv: list[str]) -> int:
    import hydra
    from hydra.core.config_store import ConfigStore

    from xbench.config import validate_pair
    from xbench.config.cli import CONF, compose, guard, strip_flags

    # conf/ holds model groups named student/ and teacher/; registering this file in the
    # ConfigStore (search path without conf/) keeps `student=llama3` a plain value override.
    ConfigStore.instance().store(name="xbench_pair", node=OmegaConf.load(CONF / "pair.yaml"))
    validate_pair(compose("xbench_pair", strip_flags(argv), config_dir=None))
    # Nothing on disk but the report: no empty out_dir when the audit fails, no .hydra/.
    sys.argv = [sys.argv[0], *argv, "hydra/job_logging=stdout"]

    @hydra.main(version_base="1.3", config_path=None, config_name="xbench_pair")
    def _app(cfg: DictConfig) -> None:
        with guard("xbench.pair"):
            result = run_pair(cfg)
        print(result["table8"])
        print(f"wrote {Path(cfg.out_dir)}/{cfg.student}__*/pair_audit.md and the table above")

    _app()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``python -m xbench.pair key=value ...``); returns the exit code."""
    from xbench.config.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("xbench.pair", argv, _cli, _help)


if __name__ == "__main__":
    sys.exit(main())
