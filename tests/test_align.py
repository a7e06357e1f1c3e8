"""Alignment: pinned cases with real tokenizers, collation, pad == eos, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xbench.assets import shared_tokenizer
from xbench.tokenpair.align import TokenizerPairAligner, align, collate_alignments
from xbench.tokenpair.canon import decode_ids

pytestmark = pytest.mark.real_assets


@pytest.fixture(scope="module")
def llama_qwen() -> TokenizerPairAligner:
    return TokenizerPairAligner(shared_tokenizer("llama3"), shared_tokenizer("qwen3"))


def _chunks(aligner, text: str, method: str):
    si, ti, so, to = aligner.encode([text])
    al = aligner.align(si[0], ti[0], so[0], to[0], method=method)
    s_tok, t_tok = aligner.student_tokenizer, aligner.teacher_tokenizer
    texts = [
        (
            decode_ids(s_tok, si[0][al.student_chunk == c]),
            decode_ids(t_tok, ti[0][al.teacher_chunk == c]),
        )
        for c in range(al.num_chunks)
    ]
    return al, texts


@pytest.mark.parametrize("method", ["offset", "dp"])
def test_hello_world_with_one_sided_bos(llama_qwen, method: str) -> None:
    al, texts = _chunks(llama_qwen, "Hello world.", method)
    assert al.student_chunk.tolist() == [-1, 0, 1, 2]  # Llama's BOS is a gap
    assert al.teacher_chunk.tolist() == [0, 1, 2]
    assert al.one_to_one.all() and al.valid.all()
    assert texts == [("Hello", "Hello"), (" world", " world"), (".", ".")]


@pytest.mark.parametrize("method", ["offset", "dp"])
def test_digits_grouped_vs_split(llama_qwen, method: str) -> None:
    al, texts = _chunks(llama_qwen, "12345", method)
    assert texts == [("123", "123"), ("45", "45")]  # 1:3 then 1:2
    assert al.teacher_chunk.tolist() == [0, 0, 0, 1, 1]
    assert not al.one_to_one.any()


@pytest.mark.parametrize("method", ["offset", "dp"])
def test_multibyte_split_characters(llama_qwen, method: str) -> None:
    # Llama splits 👍 into three byte tokens with the same character span; Qwen has one token.
    al, texts = _chunks(llama_qwen, "ok 👍🏽 e\u0301", method)
    assert al.valid.all()
    assert all(s == t for s, t in texts[:-1])
    assert texts[-1] == (" e\u0301", " é")  # Qwen's NFC normalizer composes the accent
    if method == "offset":  # tokens sharing one character's span are never cut apart
        assert texts[:3] == [("ok", "ok"), (" 👍", " 👍"), ("🏽", "🏽")]


def test_byte_fallback_text_on_smollm2() -> None:
    aligner = TokenizerPairAligner(shared_tokenizer("llama3"), shared_tokenizer("smollm2"))
    _, texts = _chunks(aligner, "日本語", "offset")
    assert "".join(t for _, t in texts) == "日本語"
    assert all(s == t for s, t in texts)


def test_pad_equals_eos_keeps_the_real_eos(llama_qwen) -> None:
    llama, qwen = llama_qwen.student_tokenizer, llama_qwen.teacher_tokenizer
    assert qwen.pad_token_id == qwen.eos_token_id
    si, ti, so, to = llama_qwen.encode(["Hi there", "A"])
    # Append EOS the way a template post-processor does: zero-width, offsets (0, 0).
    si = [np.append(x, llama.eos_token_id) for x in si]
    ti = [np.append(x, qwen.eos_token_id) for x in ti]
    so = [np.vstack([x, [0, 0]]) for x in so]
    to = [np.vstack([x, [0, 0]]) for x in to]
    als = llama_qwen.align_batch(si, ti, so, to)
    first = als[0]
    eos_chunk = first.student_chunk[-1]
    assert eos_chunk == first.teacher_chunk[-1] == first.num_chunks - 1
    assert first.one_to_one[eos_chunk] and first.valid[eos_chunk]
    # Collate right-pads with -1 (padding never confused with EOS by id).
    batch = collate_alignments(als)
    assert batch.student_chunk.shape == (2, len(si[0])) and batch.teacher_chunk.shape == (2, 3)
    assert batch.chunk_mask[0, eos_chunk]
    assert batch.teacher_chunk[1].tolist() == [0, 1, -1]
    # Chunk 0 holds Qwen's position 0: no logits predict it, so it is masked out.
    assert not batch.chunk_mask[:, 0].any()
    assert batch.chunk_mask.dtype == torch.bool and batch.student_chunk.dtype == torch.int64


def test_module_align_entry_point_and_fallback(llama_qwen) -> None:
    llama, qwen = llama_qwen.student_tokenizer, llama_qwen.teacher_tokenizer
    si, ti, so, to = llama_qwen.encode(["Hello world."])
    kw = {"student_tokenizer": llama, "teacher_tokenizer": qwen}
    by_offset = align(si[0], ti[0], student_offsets=so[0], teacher_offsets=to[0], **kw)
    by_fallback = align(si[0], ti[0], **kw)  # no offsets: DP fallback
    assert by_offset.student_chunk.tolist() == by_fallback.student_chunk.tolist()
    with pytest.raises(ValueError, match="offsets"):
        align(si[0], ti[0], on_missing_offsets="error", **kw)
    with pytest.raises(ValueError, match="method"):
        align(si[0], ti[0], method="magic", **kw)


def test_bad_inputs_raise_one_clear_error(llama_qwen) -> None:
    with pytest.raises(ValueError, match="student_ids holds ids outside"):
        llama_qwen.align_batch([np.array([10**7])], [np.array([1])], [[[0, 1]]], [[[0, 1]]])
    with pytest.raises(ValueError, match="differ in length"):
        llama_qwen.align_batch([np.array([1, 2])], [np.array([1])], [[[0, 1]]], [[[0, 1]]])
    with pytest.raises(ValueError, match="one entry per sequence"):
        llama_qwen.align_batch([np.array([1])], [], [], [])
    with pytest.raises(ValueError, match="student_len"):
        collate_alignments([llama_qwen.align_dp([9906, 1917], [9707, 1879])], student_len=1)


def test_empty_and_one_sided_text(llama_qwen) -> None:
    al = llama_qwen.align(
        np.array([128000]), np.array([], dtype=np.int64), [[0, 0]], np.zeros((0, 2))
    )
    assert al.num_chunks == 0 and al.student_chunk.tolist() == [-1]
