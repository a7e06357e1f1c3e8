"""The vectorized offset aligner's fast path against its per-sequence slow path, and the flat
batch API (``align_batch_flat`` + ``collate_alignments``) against the per-sequence one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_align_properties import TEXT, _aligner

from xbench.tokenpair.align import collate_alignments
from xbench.tokenpair.types import FlatAlignment

pytestmark = pytest.mark.real_assets

_FIELDS = ("student_chunk", "teacher_chunk", "one_to_one", "valid")


def _same(a, b) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f)) and getattr(a, f).dtype == getattr(b, f).dtype
        for f in _FIELDS
    )


def _with_zero_width(ids, offs, tok_id: int, where: list[int]):
    """Insert zero-width (0, 0) tokens (a post-processor's special) at the given places:
    0 = leading, 1 = amid the text, 2 = trailing."""
    for w in where:
        at = {0: 0, 1: len(ids) // 2, 2: len(ids)}[w]
        ids = np.insert(ids, at, tok_id)
        offs = np.insert(offs, at, [0, 0], axis=0)
    return ids, offs


BATCH = st.lists(
    st.tuples(
        TEXT,
        st.lists(st.sampled_from([0, 1, 2]), max_size=2),  # student zero-width inserts
        st.lists(st.sampled_from([0, 1, 2]), max_size=2),  # teacher zero-width inserts
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("teacher", ["qwen3", "smollm2"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=BATCH)
def test_fast_path_equals_slow_path(teacher: str, batch) -> None:
    aligner = _aligner(teacher)
    texts = [b[0] for b in batch]
    si, ti, so, to = aligner.encode(texts)
    s_eos = aligner.student_tokenizer.eos_token_id
    t_eos = aligner.teacher_tokenizer.eos_token_id
    for k, (_, s_where, t_where) in enumerate(batch):
        si[k], so[k] = _with_zero_width(si[k], so[k], s_eos, s_where)
        ti[k], to[k] = _with_zero_width(ti[k], to[k], t_eos, t_where)
    fast = aligner._offset.align(si, ti, so, to, texts).to_list()
    slow = aligner._offset.align(si, ti, so, to, texts, force_slow=True).to_list()
    assert len(fast) == len(slow) == len(texts)
    for k, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert _same(a, b), (k, texts[k], batch[k][1:])
    # The flat API holds the same rows, and collates to the same batch.
    flat = aligner.align_batch_flat(si, ti, so, to, texts)
    assert isinstance(flat, FlatAlignment) and len(flat) == len(texts)
    assert all(_same(flat[k], fast[k]) for k in range(len(texts)))
    assert all(_same(x, y) for x, y in zip(flat.to_list(), fast, strict=True))
    by_list = collate_alignments(fast, 300, 300, 300)
    by_flat = collate_alignments(flat, 300, 300, 300)
    for f in ("student_chunk", "teacher_chunk", "chunk_mask", "one_to_one"):
        assert torch.equal(getattr(by_list, f), getattr(by_flat, f)), f


def test_overlaps_in_many_sequences_take_the_batch_wide_path() -> None:
    """Byte-split characters in more sequences than the per-sequence fix handles: the running
    max / suffix min over the whole batch gives the same alignments."""
    aligner = _aligner("qwen3")
    texts = [f"{i} 👍🏽 日本語 e\u0301 ok" for i in range(80)] + ["plain"] * 5
    si, ti, so, to = aligner.encode(texts)
    fast = aligner.align_batch(si, ti, so, to, texts)
    slow = aligner._offset.align(si, ti, so, to, texts, force_slow=True).to_list()
    assert all(_same(a, b) for a, b in zip(fast, slow, strict=True))


def test_empty_batch_and_empty_sequences() -> None:
    aligner = _aligner("qwen3")
    assert aligner.align_batch([], [], [], []) == []
    si, ti, so, to = aligner.encode(["", "Hi", ""])
    fast = aligner.align_batch(si, ti, so, to)
    slow = aligner._offset.align(si, ti, so, to, force_slow=True).to_list()
    assert all(_same(a, b) for a, b in zip(fast, slow, strict=True))
    assert fast[0].num_chunks == 0 and fast[1].num_chunks == 1
