"""DP aligner vs offset aligner on real tokenizer pairs: the issue-16 reproducers and a Hypothesis
fuzz (Llama-3 vs Qwen3, o200k, Gemma-3 and SmolLM2; four special-token modes).

The big fuzz (10,000 texts per pair) is ``python -m benchmarks.align_fuzz``; this file runs the
reproducers and a few hundred Hypothesis examples per pair.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbench.assets import load_gsm8k_test, load_tokenizer, shared_tokenizer
from xbench.tokenpair.align import TokenizerPairAligner
from xbench.tokenpair.align_check import (
    SPECIAL_MODES,
    check_dp,
    mixed_texts,
    set_special_mode,
    spellable,
)

pytestmark = pytest.mark.real_assets

TEACHERS = ("qwen3", "phi4like", "gemma3", "smollm2")


@pytest.fixture(scope="module")
def llama_qwen() -> TokenizerPairAligner:
    return TokenizerPairAligner(shared_tokenizer("llama3"), shared_tokenizer("qwen3"))


def _dp(aligner, text):
    si, ti, so, to = aligner.encode([text])
    return aligner.align(si[0], ti[0], method="dp"), si[0], ti[0], so[0], to[0]


def test_special_inside_the_text_keeps_positions(llama_qwen) -> None:
    # Qwen keeps <|im_start|> whole (a special), Llama spells it as text: the byte totals differ.
    text = "<|im_start|><"
    dp, _, _, so, to = _dp(llama_qwen, text)
    got = check_dp(llama_qwen, text)
    assert got.errors == 0, got
    # Every Llama text token is in a chunk, and that chunk holds the teacher's special (invalid).
    assert (dp.student_chunk[1:] >= 0).all()
    assert not dp.valid[dp.teacher_chunk[0]]
    # Each DP chunk covers the same characters on both sides.
    for c in range(dp.num_chunks):
        s_span = so[dp.student_chunk == c]
        t_span = to[dp.teacher_chunk == c]
        assert (s_span[:, 0].min(), s_span[:, 1].max()) == (t_span[:, 0].min(), t_span[:, 1].max())


def test_non_nfc_text_under_an_nfc_teacher(llama_qwen) -> None:
    # Qwen's NFC composes e + U+0301 (chars 1-2) into é; the precomposed é at char 3 must pair
    # with the teacher's é at char 3, not with the composed one.
    text = "\uf900e\u0301\u00e9\uf900"
    dp, _, _, so, to = _dp(llama_qwen, text)
    assert check_dp(llama_qwen, text).errors == 0
    (s_e,) = np.flatnonzero((so[:, 0] == 3) & (so[:, 1] == 4))
    (t_e,) = np.flatnonzero((to[:, 0] == 3) & (to[:, 1] == 4))
    c = dp.student_chunk[s_e]
    assert c >= 0 and dp.one_to_one[c] and dp.valid[c]
    assert np.flatnonzero(dp.teacher_chunk == c).tolist() == [t_e]


def test_appended_eos_is_not_paired_with_an_in_text_special() -> None:
    s_tok, t_tok = load_tokenizer("llama3"), load_tokenizer("smollm2")
    set_special_mode(s_tok, "bos+eos")
    set_special_mode(t_tok, "bos+eos")
    aligner = TokenizerPairAligner(s_tok, t_tok)
    text = "<|endoftext|>"  # SmolLM2's special, plain text to Llama
    dp, si, _, _, to = _dp(aligner, text)
    assert si[0] == s_tok.bos_token_id and si[-1] == s_tok.eos_token_id
    (t_special,) = np.flatnonzero(to[:, 1] > to[:, 0])
    # Llama's appended EOS (after char 13) is not paired with SmolLM2's special (chars 0-13)...
    assert dp.student_chunk[-1] != dp.teacher_chunk[t_special]
    # ... which sits in one invalid chunk with the Llama tokens spelling it.
    c = dp.teacher_chunk[t_special]
    assert not dp.valid[c] and (dp.student_chunk[1:-1] == c).all()
    assert check_dp(aligner, text).errors == 0


def test_long_text_keeps_every_exact_pair(llama_qwen) -> None:
    # A chat transcript: Qwen's specials make its byte total differ from Llama's.
    rows = load_gsm8k_test()
    text = "".join(
        f"<|im_start|>user\n{r['question']}<|im_end|>\n<|im_start|>assistant\n{r['answer']}"
        "<|im_end|>\n"
        for r in rows[:12]
    )[:2000]
    got = check_dp(llama_qwen, text)
    assert got.errors == 0, got
    assert got.offset_exact_pairs > 400 and got.missed_exact_pairs == 0


@pytest.fixture(scope="module")
def fuzz_pairs():
    """Per teacher: an aligner over private tokenizer copies (their post-processors are switched
    per example) and the character filter for bytes the teacher cannot spell."""
    student = load_tokenizer("llama3")
    return {
        name: (aligner, spellable(aligner.teacher_tokenizer))
        for name in TEACHERS
        for aligner in [TokenizerPairAligner(student, load_tokenizer(name))]
    }


_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("teacher", TEACHERS)
def test_dp_matches_offset_on_mixed_texts(fuzz_pairs, teacher: str) -> None:
    aligner, ok = fuzz_pairs[teacher]

    @_FUZZ
    @given(mixed_texts(ok), st.sampled_from(SPECIAL_MODES))
    def run(text: str, mode: str) -> None:
        set_special_mode(aligner.student_tokenizer, mode)
        set_special_mode(aligner.teacher_tokenizer, mode)
        aligner.refresh_added_specials()
        got = check_dp(aligner, text)
        assert got.errors == 0, got

    run()
