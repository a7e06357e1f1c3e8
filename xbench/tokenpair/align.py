"""Cross-tokenizer alignment: chunk the student and teacher tokenizations of one text.

Two aligners produce the same output (:class:`~xbench.tokenpair.types.SeqAlignment`):

- ``"offset"`` (default): from the character offsets of both tokenizations, the finest common
  segmentation. A position is a *cut* on one side when every token lies wholly before or after it;
  chunks are the spans between cuts common to both sides, so they are 1:1, 1:N, N:1 or N:M by
  construction and both sides of a chunk cover the same text. Linear in the number of tokens and
  vectorized over a whole batch (flat numpy arrays, sequences separated by a position stride).
- ``"dp"``: the X-Token paper's dynamic programme over canonical tokens (1:1 +3 / -3, 1:k and k:1
  for k = 2..4 scoring 1.5·k when the single token equals the concatenated span, gap -1.5), cut
  at unique-trigram anchors so each DP stays local. Works from ids alone: a step is exact only
  when both sides also start and end at the same position of the text (a special written inside
  the text counts its content, a post-processor's BOS/EOS nothing, non-NFC text is measured in
  NFC), so equal tokens at different places are never paired. Consecutive non-exact steps are
  merged into one region: a valid N:M chunk when both sides spell the same text, otherwise an
  invalid chunk (kept, masked out of the loss); a special written inside the text joins its
  region's chunk (invalid), a zero-width special is a gap.

Zero-width tokens (a BOS or EOS added by a post-processor) are one-sided gaps (chunk -1) unless
the other side has zero-width tokens of the same canonical role at the same text boundary, in which
case they pair 1:1 (both EOS of a pad == eos tokenizer survive as a chunk). Padding is excluded by
the caller's attention mask, never by comparing ids with the pad id, which would drop a real EOS
when pad == eos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from xbench.tokenpair.align_collate import collate_alignments
from xbench.tokenpair.align_dp import align_dp, dp_keys
from xbench.tokenpair.align_offset import OffsetAligner
from xbench.tokenpair.canon import token_table
from xbench.tokenpair.types import FlatAlignment, SeqAlignment

__all__ = [
    "TokenizerPairAligner",
    "align",
    "align_dp",
    "collate_alignments",
]

Method = Literal["offset", "dp"]


class TokenizerPairAligner:
    """Aligns token sequences of one student/teacher tokenizer pair.

    Args:
        student_tokenizer: Fast tokenizer of the student.
        teacher_tokenizer: Fast tokenizer of the teacher.
        on_missing_offsets: What the offset method does when offsets are not given: ``"dp"``
            falls back to the DP aligner, ``"error"`` raises.
    """

    def __init__(
        self,
        student_tokenizer,
        teacher_tokenizer,
        on_missing_offsets: Literal["dp", "error"] = "dp",
    ) -> None:
        if on_missing_offsets not in ("dp", "error"):
            raise ValueError(
                f"on_missing_offsets={on_missing_offsets!r} is not supported; use 'dp' or 'error'."
            )
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.on_missing_offsets = on_missing_offsets
        self._offset = OffsetAligner(student_tokenizer, teacher_tokenizer)
        s_table, t_table = token_table(student_tokenizer), token_table(teacher_tokenizer)
        self._s_keys = dp_keys(s_table.canonical, s_table.raw_bytes, s_table.special)
        self._t_keys = dp_keys(t_table.canonical, t_table.raw_bytes, t_table.special)
        self._s_bytes, self._t_bytes = s_table.raw_bytes, t_table.raw_bytes
        # What a special spells when written inside the text, and which ones the post-processor
        # adds (zero-width): the DP's position line needs both (see align_dp).
        self._s_content = _special_contents(student_tokenizer, s_table.special)
        self._t_content = _special_contents(teacher_tokenizer, t_table.special)
        self.refresh_added_specials()

    def refresh_added_specials(self) -> None:
        """Re-read which special ids each post-processor adds around a text (the DP counts them
        zero-width); call after changing a tokenizer's post-processor."""
        self._s_added = _added_specials(self.student_tokenizer)
        self._t_added = _added_specials(self.teacher_tokenizer)

    def encode(self, texts: Sequence[str]) -> tuple[list[np.ndarray], ...]:
        """Tokenize texts with both tokenizers (batched) and return ids and offsets as numpy.

        Args:
            texts: The texts, identical for both sides.

        Returns:
            ``(student_ids, teacher_ids, student_offsets, teacher_offsets)``, lists of ``int64``
            arrays of shape ``(T,)`` / ``(T, 2)``.
        """
        out = []
        for tok in (self.student_tokenizer, self.teacher_tokenizer):
            enc = tok(list(texts), return_offsets_mapping=True)
            out.append(
                (
                    [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]],
                    [np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in enc["offset_mapping"]],
                )
            )
        return out[0][0], out[1][0], out[0][1], out[1][1]

    def align(
        self,
        student_ids,
        teacher_ids,
        student_offsets=None,
        teacher_offsets=None,
        method: Method = "offset",
        texts: str | None = None,
    ) -> SeqAlignment:
        """Align one sequence pair (unpadded).

        Args:
            student_ids: ``(Ts,)`` student token ids.
            teacher_ids: ``(Tt,)`` teacher token ids.
            student_offsets: ``(Ts, 2)`` character offsets into the shared text (offset method).
            teacher_offsets: ``(Tt, 2)`` same for the teacher.
            method: ``"offset"`` or ``"dp"``.
            texts: The text both sides tokenized; needed only when it is not NFC and a tokenizer
                normalizes (see :meth:`align_batch`).

        Returns:
            The :class:`SeqAlignment`.
        """
        if texts is not None:
            texts = [texts]
        if method == "dp":
            return self.align_dp(student_ids, teacher_ids)
        if method != "offset":
            raise ValueError(f"method={method!r} is not supported; use 'offset' or 'dp'.")
        if student_offsets is None or teacher_offsets is None:
            if self.on_missing_offsets == "dp":
                return self.align_dp(student_ids, teacher_ids)
            raise ValueError(
                "student_offsets/teacher_offsets are missing for method='offset'; tokenize with "
                "return_offsets_mapping=True or use method='dp'."
            )
        return self.align_batch(
            [student_ids], [teacher_ids], [student_offsets], [teacher_offsets], texts
        )[0]

    def align_batch(
        self,
        student_ids: Sequence,
        teacher_ids: Sequence,
        student_offsets: Sequence,
        teacher_offsets: Sequence,
        texts: Sequence[str] | None = None,
    ) -> list[SeqAlignment]:
        """Offset-align a batch of unpadded sequence pairs in one vectorized pass.

        Args:
            student_ids: Per sequence, ``(Ts,)`` student ids.
            teacher_ids: Per sequence, ``(Tt,)`` teacher ids.
            student_offsets: Per sequence, ``(Ts, 2)`` character offsets.
            teacher_offsets: Per sequence, ``(Tt, 2)`` character offsets.
            texts: Per sequence, the text. Optional: when a tokenizer normalizes (Qwen's NFC) and a
                text is not NFC, offsets no longer say which characters a token spelled (NFC
                reorders combining marks and composes Hangul jamo); with the text, cuts inside
                such clusters are forbidden. NFC texts (almost all) cost one C-level check.

        Returns:
            One :class:`SeqAlignment` per sequence.
        """
        return self._offset.align(
            student_ids, teacher_ids, student_offsets, teacher_offsets, texts
        ).to_list()

    def align_batch_flat(
        self,
        student_ids: Sequence,
        teacher_ids: Sequence,
        student_offsets: Sequence,
        teacher_offsets: Sequence,
        texts: Sequence[str] | None = None,
    ) -> FlatAlignment:
        """:meth:`align_batch` without per-sequence objects: flat arrays plus row splits, which
        :func:`collate_alignments` pads directly. Same arguments and row contents."""
        return self._offset.align(
            student_ids, teacher_ids, student_offsets, teacher_offsets, texts
        ).to_flat()

    def align_dp(self, student_ids, teacher_ids) -> SeqAlignment:
        """Align one sequence pair with the paper's anchored DP over canonical tokens.

        Works from ids alone. A special token counts as written inside the text (it spells its
        content, e.g. ``<|im_start|>`` in a chat transcript) unless it is one the tokenizer's
        post-processor adds at that end of the sequence (a BOS, an appended EOS), which is
        zero-width. Ids cannot tell a literal ``<|begin_of_text|>`` at the very start from an
        added one; such a text degrades to one invalid chunk, never to a wrong pair.
        """
        s_ids = [int(i) for i in np.asarray(student_ids).reshape(-1)]
        t_ids = [int(i) for i in np.asarray(teacher_ids).reshape(-1)]
        for name, ids, keys in (("student", s_ids, self._s_keys), ("teacher", t_ids, self._t_keys)):
            if ids and not 0 <= min(ids) <= max(ids) < len(keys):
                raise ValueError(
                    f"{name}_ids holds ids outside [0, {len(keys)}); pass ids of the {name} "
                    "tokenizer."
                )
        s_bytes = [self._s_bytes[i] for i in s_ids]
        t_bytes = [self._t_bytes[i] for i in t_ids]
        return align_dp(
            [self._s_keys[i] for i in s_ids],
            [self._t_keys[i] for i in t_ids],
            s_bytes,
            t_bytes,
            _spelled(s_ids, s_bytes, self._s_content, self._s_added),
            _spelled(t_ids, t_bytes, self._t_content, self._t_added),
        )


def _special_contents(tokenizer, special: list[bool]) -> dict[int, bytes]:
    """UTF-8 content of every special id (what it spells when written inside a text)."""
    added = tokenizer.added_tokens_decoder
    out = {}
    for i, is_special in enumerate(special):
        if is_special:
            tok = added.get(i)
            content = tok.content if tok is not None else tokenizer.convert_ids_to_tokens(i)
            out[i] = str(content).encode("utf-8")
    return out


def _added_specials(tokenizer) -> tuple[list[int], list[int]]:
    """Ids the post-processor puts before and after a text (e.g. Llama-3's BOS), from a probe."""
    probe = "a b"
    with_sp = list(tokenizer(probe)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for k in range(len(with_sp) - len(bare) + 1):
        if with_sp[k : k + len(bare)] == bare:
            return with_sp[:k], with_sp[k + len(bare) :]
    return [], []


def _spelled(
    ids: list[int],
    raw: list[bytes | None],
    content: dict[int, bytes],
    added: tuple[list[int], list[int]],
) -> list[bytes]:
    """Bytes each token occupies in the text: true bytes for text, content for a special written
    inside the text, nothing for the specials the post-processor added at either end."""
    out = [r if r is not None else content.get(i, b"") for i, r in zip(ids, raw, strict=True)]
    prefix, suffix = added
    if prefix and ids[: len(prefix)] == prefix:
        out[: len(prefix)] = [b""] * len(prefix)
    if suffix and len(ids) >= len(prefix) + len(suffix) and ids[-len(suffix) :] == suffix:
        out[len(out) - len(suffix) :] = [b""] * len(suffix)
    return out


_ALIGNERS: dict[tuple[int, int], tuple[object, object, TokenizerPairAligner]] = {}


def align(
    student_ids,
    teacher_ids,
    *,
    student_tokenizer,
    teacher_tokenizer,
    student_offsets=None,
    teacher_offsets=None,
    method: Method = "offset",
    on_missing_offsets: Literal["dp", "error"] = "dp",
) -> SeqAlignment:
    """Align one student/teacher token-sequence pair of the same text.

    Args:
        student_ids: ``(Ts,)`` student ids (unpadded).
        teacher_ids: ``(Tt,)`` teacher ids (unpadded).
        student_tokenizer: The student's fast tokenizer.
        teacher_tokenizer: The teacher's fast tokenizer.
        student_offsets: ``(Ts, 2)`` character offsets (``return_offsets_mapping=True``).
        teacher_offsets: ``(Tt, 2)`` character offsets.
        method: ``"offset"`` (default, linear time) or ``"dp"`` (the paper's DP).
        on_missing_offsets: With ``method="offset"`` and no offsets: ``"dp"`` falls back to the
            DP aligner, ``"error"`` raises.

    Returns:
        The :class:`SeqAlignment`.
    """
    key = (id(student_tokenizer), id(teacher_tokenizer))
    hit = _ALIGNERS.get(key)
    if hit is None or hit[0] is not student_tokenizer or hit[1] is not teacher_tokenizer:
        aligner = TokenizerPairAligner(student_tokenizer, teacher_tokenizer)
        _ALIGNERS[key] = (student_tokenizer, teacher_tokenizer, aligner)
    else:
        aligner = hit[2]
    if on_missing_offsets not in ("dp", "error"):
        raise ValueError(
            f"on_missing_offsets={on_missing_offsets!r} is not supported; use 'dp' or 'error'."
        )
    if method == "offset" and (student_offsets is None or teacher_offsets is None):
        if on_missing_offsets == "error":
            raise ValueError(
                "student_offsets/teacher_offsets are missing for method='offset'; tokenize with "
                "return_offsets_mapping=True or pass method='dp'."
            )
        method = "dp"
    return aligner.align(student_ids, teacher_ids, student_offsets, teacher_offsets, method)
