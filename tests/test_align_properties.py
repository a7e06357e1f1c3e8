"""Property tests: both aligners on arbitrary Unicode text with real tokenizer pairs."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbench.assets import shared_tokenizer
from xbench.tokenpair.align import TokenizerPairAligner
from xbench.tokenpair.canon import decode_ids, token_table
from xbench.tokenpair.types import SeqAlignment

pytestmark = pytest.mark.real_assets

_FRAGMENTS = [
    "日本語",
    "中文字",
    "한국어",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "e\u0301",
    "a\u0308\u0323",
    "שלום",
    "مرحبا",
    "\u200f",
    "  ",
    "\t",
    "\n\n",
    " \n ",
    "123",
    "45678",
    "3.14",
    "1,000",
    " the",
    "Hello",
    "#### 42",
    "ß",
    "İ",
    "ﬁ",
    "Ω",
    "\u00a0",
    "\u3000",
    "$",
    "...",
    "'s",
]
TEXT = st.lists(
    st.one_of(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=6),
        st.sampled_from(_FRAGMENTS),
    ),
    max_size=12,
).map("".join)
_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_ALIGNERS: dict[str, TokenizerPairAligner] = {}


def _aligner(teacher: str) -> TokenizerPairAligner:
    if teacher not in _ALIGNERS:
        _ALIGNERS[teacher] = TokenizerPairAligner(
            shared_tokenizer("llama3"), shared_tokenizer(teacher)
        )
    return _ALIGNERS[teacher]


def _lossless(tok, text: str) -> bool:
    """SmolLM2's byte alphabet lacks 21 bytes and silently drops them; such texts cannot be
    spelled by its tokens at all, so chunk texts cannot match (a tokenizer defect, not ours)."""
    raw = token_table(tok).raw_bytes
    alphabet = {r[0] for r in raw if r is not None and len(r) == 1}
    return set(text.encode("utf-8")) <= alphabet


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _check_structure(al: SeqAlignment, n_s: int, n_t: int) -> None:
    """Chunks partition both sequences in order; every chunk has tokens on both sides."""
    assert al.student_chunk.shape == (n_s,) and al.teacher_chunk.shape == (n_t,)
    c = al.num_chunks
    for side in (al.student_chunk, al.teacher_chunk):
        ids = side[side >= 0]
        assert (side >= -1).all() and (ids < c).all()
        assert (np.diff(ids) >= 0).all()  # increasing along the sequence
        assert set(ids.tolist()) == set(range(c))  # no empty chunk on either side
    s_cnt = np.bincount(al.student_chunk[al.student_chunk >= 0], minlength=c)
    t_cnt = np.bincount(al.teacher_chunk[al.teacher_chunk >= 0], minlength=c)
    assert (al.one_to_one == ((s_cnt == 1) & (t_cnt == 1))).all()


def _run(teacher: str, text: str):
    aligner = _aligner(teacher)
    if not _lossless(aligner.teacher_tokenizer, text):
        return
    si, ti, so, to = aligner.encode([text])
    s_tab = token_table(aligner.student_tokenizer)
    t_tab = token_table(aligner.teacher_tokenizer)
    s_text = ~np.array([s_tab.special[i] for i in si[0]], dtype=bool)
    t_text = ~np.array([t_tab.special[i] for i in ti[0]], dtype=bool)
    out = {}
    for method in ("offset", "dp"):
        al = aligner.align(si[0], ti[0], so[0], to[0], method=method, texts=text)
        _check_structure(al, len(si[0]), len(ti[0]))
        for c in np.flatnonzero(al.valid):
            s_txt = decode_ids(aligner.student_tokenizer, si[0][al.student_chunk == c])
            t_txt = decode_ids(aligner.teacher_tokenizer, ti[0][al.teacher_chunk == c])
            assert _nfc(s_txt) == _nfc(t_txt), (method, c)
        # Llama's BOS exists on one side only: always a gap.
        assert si[0][0] == 128_000 and al.student_chunk[0] == -1
        out[method] = al
    off = out["offset"]
    # The offset aligner covers every text token (no text on one side only here) and is valid.
    if s_text.any() and t_text.any() and not (~s_text[1:]).any() and not (~t_text).any():
        assert (off.student_chunk[1:] >= 0).all() and (off.teacher_chunk >= 0).all()
        assert off.valid.all()
    _check_agreement(out["offset"], out["dp"], si[0], ti[0], s_tab, t_tab)


def _check_agreement(off, dp, s_ids, t_ids, s_tab, t_tab) -> None:
    """Where both aligners call a chunk exact 1:1, they pair the same two tokens."""

    def exact_pairs(al: SeqAlignment) -> dict[int, int]:
        pairs = {}
        for c in np.flatnonzero(al.one_to_one & al.valid):
            (s,) = np.flatnonzero(al.student_chunk == c)
            (t,) = np.flatnonzero(al.teacher_chunk == c)
            if s_tab.canonical[s_ids[s]] == t_tab.canonical[t_ids[t]]:
                pairs[int(s)] = int(t)
        return pairs

    a, b = exact_pairs(off), exact_pairs(dp)
    for s in a.keys() & b.keys():
        assert a[s] == b[s], (s, a[s], b[s])


@_SETTINGS
@given(TEXT)
def test_llama3_qwen3_properties(text: str) -> None:
    _run("qwen3", text)


@_SETTINGS
@given(TEXT)
def test_llama3_smollm2_properties(text: str) -> None:
    _run("smollm2", text)


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=6))
def test_batch_equals_single(texts: list[str]) -> None:
    aligner = _aligner("qwen3")
    si, ti, so, to = aligner.encode(texts)
    batch = aligner.align_batch(si, ti, so, to, texts)
    for k in range(len(texts)):
        one = aligner.align(si[k], ti[k], so[k], to[k], texts=texts[k])
        assert np.array_equal(one.student_chunk, batch[k].student_chunk)
        assert np.array_equal(one.teacher_chunk, batch[k].teacher_chunk)
        assert np.array_equal(one.one_to_one, batch[k].one_to_one)
