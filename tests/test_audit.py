"""Pair audit on tiny tokenizers: classes, coverage, recommendation, report files."""

from __future__ import annotations

import json

import pytest
from test_projection import tiny_pair, tiny_projection

from xbench.pair import run_pair
from xbench.tokenpair.audit import audit_pair, render_markdown, token_classes

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
    report = run_pair(cfg)
    assert report["recommendation"]["method"] == "pkl"
    assert json.loads((tmp_path / "out" / "pair_audit.json").read_text())["coverage"]
    assert (tmp_path / "out" / "pair_audit.md").read_text().startswith("# Tokenizer-pair audit")
    with pytest.raises(ValueError, match="rank=0: set it to an integer >= 1"):
        run_pair({**cfg, "rank": 0})
