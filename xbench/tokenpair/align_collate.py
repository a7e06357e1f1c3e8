"""Right-padding of per-sequence (or flat) alignments into a :class:`PairAlignment` batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xbench.tokenpair.types import FlatAlignment, PairAlignment, SeqAlignment


def collate_alignments(
    alignments: Sequence[SeqAlignment] | FlatAlignment,
    student_len: int | None = None,
    teacher_len: int | None = None,
    num_chunks: int | None = None,
) -> PairAlignment:
    """Right-pad per-sequence alignments into a :class:`PairAlignment` batch.

    Args:
        alignments: One :class:`SeqAlignment` per sequence (token 0 = position 0), or a
            :class:`FlatAlignment` (from :meth:`TokenizerPairAligner.align_batch_flat`), padded
            without per-sequence Python work.
        student_len: Padded student length Ts (default: longest).
        teacher_len: Padded teacher length Tt (default: longest).
        num_chunks: Padded chunk count C (default: most chunks).

    Returns:
        The batch; ``chunk_mask`` is True for valid chunks that contain neither side's position 0.
    """
    bsz = len(alignments)
    if bsz == 0:
        raise ValueError("collate_alignments got an empty list; pass at least one alignment.")
    if isinstance(alignments, FlatAlignment):
        return _collate_flat(alignments, student_len, teacher_len, num_chunks)
    ts = max(len(x.student_chunk) for x in alignments)
    tt = max(len(x.teacher_chunk) for x in alignments)
    c = max(x.num_chunks for x in alignments)
    ts, tt, c = _check_lens(student_len, teacher_len, num_chunks, ts, tt, c)
    s_chunk = np.full((bsz, ts), -1, dtype=np.int64)
    t_chunk = np.full((bsz, tt), -1, dtype=np.int64)
    mask = np.zeros((bsz, c), dtype=bool)
    oo = np.zeros((bsz, c), dtype=bool)
    for row, al in enumerate(alignments):
        s_chunk[row, : len(al.student_chunk)] = al.student_chunk
        t_chunk[row, : len(al.teacher_chunk)] = al.teacher_chunk
        k = al.num_chunks
        mask[row, :k] = al.valid
        oo[row, :k] = al.one_to_one
        # No logits predict position 0, so a chunk holding it cannot be scored on that side.
        for first in (al.student_chunk[:1], al.teacher_chunk[:1]):
            if len(first) and first[0] >= 0:
                mask[row, first[0]] = False
    return PairAlignment(
        student_chunk=torch.from_numpy(s_chunk),
        teacher_chunk=torch.from_numpy(t_chunk),
        chunk_mask=torch.from_numpy(mask),
        one_to_one=torch.from_numpy(oo),
    )


def _check_lens(student_len, teacher_len, num_chunks, ts: int, tt: int, c: int):
    for name, given, need in (
        ("student_len", student_len, ts),
        ("teacher_len", teacher_len, tt),
        ("num_chunks", num_chunks, c),
    ):
        if given is not None and given < need:
            raise ValueError(f"{name}={given} is shorter than the batch needs ({need}); raise it.")
    return student_len or ts, teacher_len or tt, num_chunks or c


def _collate_flat(fa: FlatAlignment, student_len, teacher_len, num_chunks) -> PairAlignment:
    """:func:`collate_alignments` of a :class:`FlatAlignment`: one scatter per field."""
    bsz = len(fa)
    s_len, t_len, c_len = (
        np.diff(x) for x in (fa.student_splits, fa.teacher_splits, fa.chunk_splits)
    )
    ts, tt, c = _check_lens(
        student_len, teacher_len, num_chunks, int(s_len.max()), int(t_len.max()), int(c_len.max())
    )
    rows = np.arange(bsz)

    def pad(flat, splits, lens, width, fill, dtype):
        out = np.full((bsz, width), fill, dtype=dtype)
        r = np.repeat(rows, lens)
        out[r, np.arange(len(flat)) - np.repeat(splits[:-1], lens)] = flat
        return out

    s_chunk = pad(fa.student_chunk, fa.student_splits, s_len, ts, -1, np.int64)
    t_chunk = pad(fa.teacher_chunk, fa.teacher_splits, t_len, tt, -1, np.int64)
    mask = pad(fa.valid, fa.chunk_splits, c_len, c, False, bool)
    oo = pad(fa.one_to_one, fa.chunk_splits, c_len, c, False, bool)
    # No logits predict position 0, so a chunk holding it cannot be scored on that side.
    for chunk in (s_chunk, t_chunk):
        if chunk.shape[1]:
            first = chunk[:, 0]
            hit = first >= 0
            mask[rows[hit], first[hit]] = False
    return PairAlignment(
        student_chunk=torch.from_numpy(s_chunk),
        teacher_chunk=torch.from_numpy(t_chunk),
        chunk_mask=torch.from_numpy(mask),
        one_to_one=torch.from_numpy(oo),
    )
