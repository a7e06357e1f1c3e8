"""Alignment data types shared by the aligners, the collator and the losses (docs/contracts.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PairAlignment", "SeqAlignment"]


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
