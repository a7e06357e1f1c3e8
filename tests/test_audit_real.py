"""Audits of the real pairs the paper studies (Table 8): Llama-3 vs Qwen3 and vs SmolLM2."""

from __future__ import annotations

import pytest

from xbench.tokenpair.audit import audit_pair
from xbench.tokenpair.projection import build_projection

pytestmark = pytest.mark.real_assets


@pytest.fixture(scope="module")
def llama3():
    from xbench.assets import load_tokenizer

    return load_tokenizer("llama3")


@pytest.fixture(scope="module")
def texts():
    from xbench.tokenpair.pair_audit import sample_corpus

    return sample_corpus(40, seed=0)


@pytest.mark.parametrize("teacher_name", ["qwen3", "smollm2"])
def test_digit_splitting_teachers_leave_multi_digit_numerals_uncovered(
    llama3, texts, teacher_name
) -> None:
    from xbench.assets import load_tokenizer

    teacher = load_tokenizer(teacher_name)
    report = audit_pair(llama3, teacher, texts, build_projection(llama3, teacher))
    cov = report["coverage"]
    assert (cov["digit1"]["total"], cov["digit2"]["total"], cov["digit3"]["total"]) == (
        10,
        100,
        1000,
    )
    for key in ("gold_trl", "gold_canonical", "hkl_relaxed"):
        assert cov["digit1"][key] == 10
        assert cov["digit2"][key] == cov["digit3"][key] == 0
    assert report["recommendation"]["method"] == "pkl"
    assert report["numerals"]["critical_student_tokens"] == 1100
    assert report["numerals"]["teacher"]["multi_digit_share_of_numerals"] == 0
    assert report["alignment"]["available"] and report["alignment"]["chunk_shapes"]["1:N"] > 0


def test_o200k_teacher_covers_every_numeral_as_in_table8(llama3, texts) -> None:
    """Phi-4-mini's family (o200k) groups digits like Llama-3: the paper's 100/100 and
    1,000/1,000, and the audit recommends H-KL."""
    from xbench.assets import shared_tokenizer
    from xbench.tokenpair.projection import load_or_build

    teacher = shared_tokenizer("phi4like")
    report = audit_pair(llama3, teacher, texts, load_or_build(llama3, teacher))
    cov = report["coverage"]
    for key in ("gold_trl", "gold_canonical", "hkl_relaxed"):
        assert (cov["digit1"][key], cov["digit2"][key], cov["digit3"][key]) == (10, 100, 1000)
    assert report["numerals"]["critical_student_tokens"] == 0
    assert report["recommendation"]["method"] == "hkl"
