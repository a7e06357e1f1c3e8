"""Alignment data types shared by the aligners, the collator and the losses (docs/contracts.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FlatAlignment", "PairAlignment", "SeqAlignment"]


@dataclass(frozen=True)
class SeqAlignment:
    """Chunk alignment of one student/teacher token-sequence pair (unpadded, numpy).

    Attributes:
        student_chunk: ``int64 (Ts,)`` chunk id of each student token; -1 = in no chunk (a
            one-sided special token, a gap of the DP aligner, padding).
        teacher_chunk: ``int64 (Tt,)`` same for the teacher tokens.
        one_to_one: ``bool (C,)`` chunk is exactly one student and one teacher token.
        valid: ``bool (C,)`` both sides of the chunk decode to the same text (False for chunks
            holding a special token that sits inside text, or a DP mismatch region).
    """

    student_chunk: np.ndarray
    teacher_chunk: np.ndarray
    one_to_one: np.ndarray
    valid: np.ndarray

    @property
    def num_chunks(self) -> int:
        """Number of chunks C (ids run 0..C-1, increasing along both sequences)."""
        return int(self.one_to_one.shape[0])

    @classmethod
    def _unchecked(cls, student_chunk, teacher_chunk, one_to_one, valid) -> SeqAlignment:
        """Build without the frozen-dataclass ``__init__`` (a third of its cost), for aligners
        that emit thousands per batch; same object as the constructor gives."""
        obj = object.__new__(cls)
        d = obj.__dict__
        d["student_chunk"] = student_chunk
        d["teacher_chunk"] = teacher_chunk
        d["one_to_one"] = one_to_one
        d["valid"] = valid
        return obj


@dataclass(frozen=True)
class FlatAlignment:
    """Chunk alignments of a batch as flat arrays with row splits (no per-sequence objects).

    Row ``b`` is the :class:`SeqAlignment` of sequence ``b``: tokens
    ``student_splits[b]:student_splits[b + 1]`` of ``student_chunk`` (ids local to the row), and
    so on. ``collate_alignments`` pads it directly.

    Attributes:
        student_chunk: ``int64 (sum Ts,)`` chunk id of each student token, -1 = in no chunk.
        teacher_chunk: ``int64 (sum Tt,)`` same for the teacher tokens.
        one_to_one: ``bool (sum C,)`` per chunk, exactly one student and one teacher token.
        valid: ``bool (sum C,)`` per chunk, both sides decode to the same text.
        student_splits: ``int64 (B + 1,)`` row boundaries in ``student_chunk``.
        teacher_splits: ``int64 (B + 1,)`` row boundaries in ``teacher_chunk``.
        chunk_splits: ``int64 (B + 1,)`` row boundaries in ``one_to_one`` / ``valid``.
    """

    student_chunk: np.ndarray
    teacher_chunk: np.ndarray
    one_to_one: np.ndarray
    valid: np.ndarray
    student_splits: np.ndarray
    teacher_splits: np.ndarray
    chunk_splits: np.ndarray

    def __len__(self) -> int:
        return len(self.student_splits) - 1

    def __getitem__(self, b: int) -> SeqAlignment:
        s0, s1 = self.student_splits[b], self.student_splits[b + 1]
        t0, t1 = self.teacher_splits[b], self.teacher_splits[b + 1]
        c0, c1 = self.chunk_splits[b], self.chunk_splits[b + 1]
        return SeqAlignment(
            self.student_chunk[s0:s1],
            self.teacher_chunk[t0:t1],
            self.one_to_one[c0:c1],
            self.valid[c0:c1],
        )

    def to_list(self) -> list[SeqAlignment]:
        """One :class:`SeqAlignment` per row (views of the flat arrays)."""
        make = SeqAlignment._unchecked
        sp, tp, cp = (
            x.tolist() for x in (self.student_splits, self.teacher_splits, self.chunk_splits)
        )
        sc, tc, oo, va = self.student_chunk, self.teacher_chunk, self.one_to_one, self.valid
        return [
            make(
                sc[sp[b] : sp[b + 1]],
                tc[tp[b] : tp[b + 1]],
                oo[cp[b] : cp[b + 1]],
                va[cp[b] : cp[b + 1]],
            )
            for b in range(len(sp) - 1)
        ]

    @classmethod
    def from_list(cls, alignments: list[SeqAlignment]) -> FlatAlignment:
        """Concatenate per-sequence alignments into rows."""

        def cat(arrays, dtype):
            arrays = list(arrays)
            splits = np.zeros(len(arrays) + 1, dtype=np.int64)
            np.cumsum([len(x) for x in arrays], out=splits[1:])
            flat = (
                np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
            )
            return flat, splits

        sc, sp = cat((a.student_chunk for a in alignments), np.int64)
        tc, tp = cat((a.teacher_chunk for a in alignments), np.int64)
        oo, cp = cat((a.one_to_one for a in alignments), bool)
        va, _ = cat((a.valid for a in alignments), bool)
        return cls(sc, tc, oo, va, sp, tp, cp)


@dataclass(frozen=True)
class PairAlignment:
    """A collated batch of chunk alignments (right-padded), as in docs/contracts.md.

    Attributes:
        student_chunk: ``LongTensor (B, Ts)`` chunk id of each student token, -1 = no loss chunk.
        teacher_chunk: ``LongTensor (B, Tt)`` chunk id of each teacher token, -1 = no loss chunk.
        chunk_mask: ``BoolTensor (B, C)`` chunk enters the loss: excludes padding chunks, invalid
            chunks and chunks containing position 0 on either side (no logits predict position 0).
        one_to_one: ``BoolTensor (B, C)`` chunk is exactly one student and one teacher token.
    """

    student_chunk: torch.Tensor
    teacher_chunk: torch.Tensor
    chunk_mask: torch.Tensor
    one_to_one: torch.Tensor

    def to(self, device: torch.device | str) -> PairAlignment:
        """Return a copy with every tensor on ``device``."""
        return PairAlignment(
            student_chunk=self.student_chunk.to(device),
            teacher_chunk=self.teacher_chunk.to(device),
            chunk_mask=self.chunk_mask.to(device),
            one_to_one=self.one_to_one.to(device),
        )
