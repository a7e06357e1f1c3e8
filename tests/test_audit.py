"""Pair audit on tiny tokenizers: classes, coverage, recommendation, report files."""

from __future__ import annotations

import json

import pytest
from test_projection import tiny_pair, tiny_projection

from xbench.tokenpair.audit import audit_pair, render_markdown, render_table8, token_classes
from xbench.tokenpair.pair_audit import run_pair

TEXTS = ["In 2019 there were 201 apples.", "42 + 17 = 59, hello world!"]


def test_token_classes_are_disjoint_and_typed() -> None:
    student, _ = tiny_pair()
    classes = token_classes(student)
    seen: set[int] = set()
    for ids in classes.values():
        assert not seen & set(ids.tolist())
        seen |= set(ids.tolist())
    assert {student.decode([int(i)]) for i in classes["digit3"]} >= {"201", "000", "365"}
    assert all(len(student.decode([int(i)])) == 1 for i in classes["digit1"])
    assert student.convert_tokens_to_ids("<|begin_of_text|>") not in seen


def test_audit_recommends_pkl_when_numerals_lack_partners() -> None:
    student, teacher = tiny_pair()
    report = audit_pair(student, teacher, TEXTS, tiny_projection())
    cov = report["coverage"]
    assert cov["digit3"]["gold_trl"] == cov["digit3"]["gold_canonical"] == 0
    assert cov["digit1"]["gold_canonical"] == cov["digit1"]["total"] == 10
    assert report["recommendation"]["method"] == "pkl"
    assert report["numerals"]["critical_student_tokens"] > 0
    al = report["alignment"]
    assert al["available"] and al["chunk_shapes"]["1:N"] > 0
    json.dumps(report)  # serializable
    assert "| 3-digit numerals | 0 / " in render_markdown(report)


def test_table8_shows_paper_values_beside_teachers_the_paper_studied() -> None:
    student, teacher = tiny_pair()
    report = audit_pair(student, teacher, TEXTS, tiny_projection())
    table = render_table8("llama3", {"qwen3": report, "other": report})
    assert "| class | qwen3 (xbench) | Qwen3-4B (paper) | other (xbench) |" in table
    row = next(line for line in table.splitlines() if line.startswith("| 2-digit numerals |"))
    assert row.split(" | ")[2] == "0 / 100"  # the paper's value for Qwen3
    punct = next(line for line in table.splitlines() if line.startswith("| ASCII punctuation, all"))
    assert "88 / 88" in punct
    assert "differs from the paper" in table


def test_audit_recommends_hkl_for_the_same_tokenizer() -> None:
    from xbench.tokenpair.projection import build_projection

    student, _ = tiny_pair()
    report = audit_pair(student, student, TEXTS, build_projection(student, student))
    assert report["recommendation"]["method"] == "hkl"
    assert report["alignment"]["chunk_shapes"]["1:N"] == 0


def test_audit_rejects_a_projection_of_another_pair() -> None:
    student, _ = tiny_pair()
    with pytest.raises(ValueError, match=r"meta\.teacher\.fingerprint"):
        audit_pair(student, student, TEXTS, tiny_projection())


def test_run_pair_writes_reports(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XBENCH_CACHE", str(tmp_path / "cache"))
    student, teacher = tiny_pair()
    student.save_pretrained(tmp_path / "s")
    teacher.save_pretrained(tmp_path / "t")
    cfg = {
        "student": str(tmp_path / "s"),
        "teacher": str(tmp_path / "t"),
        "out_dir": str(tmp_path / "out"),
        "sample_size": 0,
        "seed": 0,
        "rank": 4,
        "reverse_pass": False,
        "threshold": 0.6,
        "align_method": "offset",
    }
    result = run_pair(cfg)
    assert result["teachers"]["t"]["recommendation"]["method"] == "pkl"
    pair_dir = tmp_path / "out" / "s__t"
    assert json.loads((pair_dir / "pair_audit.json").read_text())["coverage"]
    md = (pair_dir / "pair_audit.md").read_text()
    assert md.startswith("# Tokenizer-pair audit")
    # The report states its class definitions next to Table 8.
    assert "ASCII punctuation, space + one character: a space followed by" in md
    assert "## Table 8" in md and "| t (xbench) |" in md
    # Two teachers: one table, one column per teacher.
    result = run_pair({**cfg, "teacher": [cfg["teacher"], cfg["student"]]})
    table = (tmp_path / "out" / "s__table8.md").read_text()
    assert table == result["table8"]
    assert "| class | t (xbench) | s (xbench) |" in table
    assert set(json.loads((tmp_path / "out" / "s__table8.json").read_text())) == {"t", "s"}
    with pytest.raises(ValueError, match="rank=0: set it to an integer >= 1"):
        run_pair({**cfg, "rank": 0})
    with pytest.raises(ValueError, match=r"teacher=\[\]: set it to a tokenizer name or a list"):
        run_pair({**cfg, "teacher": []})
