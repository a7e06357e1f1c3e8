"""Cross-tokenizer alignment: chunk the student and teacher tokenizations of one text.

Two aligners produce the same output (:class:`~xbench.tokenpair.types.SeqAlignment`):

- ``"offset"`` (default): from the character offsets of both tokenizations, the finest common
  segmentation. A position is a *cut* on one side when every token lies wholly before or after it;
  chunks are the spans between cuts common to both sides, so they are 1:1, 1:N, N:1 or N:M by
  construction and both sides of a chunk cover the same text. Linear in the number of tokens and
  vectorized over a whole batch (flat numpy arrays, sequences separated by a position stride).
- ``"dp"``: the X-Token paper's dynamic programme over canonical tokens (1:1 +3 / -3, 1:k and k:1
  for k = 2..4 scoring 1.5·k when the single token equals the concatenated span, gap -1.5), cut
  at unique-trigram anchors so each DP stays local. Consecutive non-exact steps are merged into
  one region: a valid N:M chunk when both sides spell the same text, otherwise an invalid chunk
  (kept, masked out of the loss); special tokens inside such regions become gaps.

Zero-width tokens (a BOS or EOS added by a post-processor) are one-sided gaps (chunk -1) unless
the other side has zero-width tokens of the same canonical role at the same text boundary, in which
case they pair 1:1 (both EOS of a pad == eos tokenizer survive as a chunk). Padding is excluded by
the caller's attention mask, never by comparing ids with the pad id, which would drop a real EOS
when pad == eos.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from xbench.tokenpair.canon import bytes_to_text, token_table
from xbench.tokenpair.types import FlatAlignment, PairAlignment, SeqAlignment

__all__ = [
    "TokenizerPairAligner",
    "align",
    "align_dp",
    "collate_alignments",
]

Method = Literal["offset", "dp"]

# DP scores from the paper.
_MATCH, _MISMATCH, _GAP, _SPAN_PER_TOKEN = 3.0, -3.0, -1.5, 1.5
_MAX_SPAN = 4
_ANCHOR_N = 3


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
        s_table, t_table = token_table(student_tokenizer), token_table(teacher_tokenizer)
        # One integer code per canonical special role shared by both sides, -1 for text tokens:
        # lets the vectorized path compare specials across vocabularies without strings.
        roles: dict[str, int] = {}
        self._s_code = _role_codes(s_table.canonical, s_table.special, roles)
        self._t_code = _role_codes(t_table.canonical, t_table.special, roles)
        self._s_special, self._t_special = self._s_code >= 0, self._t_code >= 0
        self._s_keys = _dp_keys(s_table.canonical, s_table.raw_bytes, s_table.special)
        self._t_keys = _dp_keys(t_table.canonical, t_table.raw_bytes, t_table.special)
        self._s_bytes, self._t_bytes = s_table.raw_bytes, t_table.raw_bytes
        self._normalizes = any(
            tok.backend_tokenizer.normalizer is not None
            for tok in (student_tokenizer, teacher_tokenizer)
        )

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
        return self._align_offsets(
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
        return self._align_offsets(
            student_ids, teacher_ids, student_offsets, teacher_offsets, texts
        ).to_flat()

    def _align_offsets(
        self,
        student_ids,
        teacher_ids,
        student_offsets,
        teacher_offsets,
        texts=None,
        force_slow: bool = False,
    ) -> _FlatResult:
        """Checks, flattening and :func:`_align_flat` (``force_slow``: every sequence through
        the per-sequence path, for tests)."""
        n = len(student_ids)
        lens = [len(teacher_ids), len(student_offsets), len(teacher_offsets)]
        if any(x != n for x in lens):
            raise ValueError(
                f"align_batch got {n} student sequences but {lens} teacher ids / student "
                "offsets / teacher offsets; pass one entry per sequence in each list."
            )
        s = _flatten(student_ids, student_offsets, self._s_code, self._s_special, "student")
        t = _flatten(teacher_ids, teacher_offsets, self._t_code, self._t_special, "teacher")
        forbidden = None
        if texts is not None and self._normalizes:
            if len(texts) != n:
                raise ValueError(
                    f"align_batch got {n} sequences but {len(texts)} texts; pass one per sequence."
                )
            forbidden = _forbidden_cuts(texts)
        return _align_flat(s, t, n, forbidden, force_slow)

    def align_dp(self, student_ids, teacher_ids) -> SeqAlignment:
        """Align one sequence pair with the paper's anchored DP over canonical tokens."""
        s_ids = [int(i) for i in np.asarray(student_ids).reshape(-1)]
        t_ids = [int(i) for i in np.asarray(teacher_ids).reshape(-1)]
        for name, ids, keys in (("student", s_ids, self._s_keys), ("teacher", t_ids, self._t_keys)):
            if ids and not 0 <= min(ids) <= max(ids) < len(keys):
                raise ValueError(
                    f"{name}_ids holds ids outside [0, {len(keys)}); pass ids of the {name} "
                    "tokenizer."
                )
        return align_dp(
            [self._s_keys[i] for i in s_ids],
            [self._t_keys[i] for i in t_ids],
            [self._s_bytes[i] for i in s_ids],
            [self._t_bytes[i] for i in t_ids],
        )


def _role_codes(canonical: list[str], special: list[bool], roles: dict[str, int]) -> np.ndarray:
    """``int64 (V,)``: shared role code of each special id, -1 for text tokens."""
    codes = np.full(len(canonical), -1, dtype=np.int64)
    for i, is_special in enumerate(special):
        if is_special:
            codes[i] = roles.setdefault(canonical[i], len(roles))
    return codes


def _dp_keys(canonical: list[str], raw: list[bytes | None], special: list[bool]) -> list[bytes]:
    """DP comparison key per id: true bytes for text (so split multi-byte characters concatenate
    correctly), a NUL-prefixed role for specials (never equal to any text)."""
    return [
        b"\x00" + canonical[i].encode() if special[i] or raw[i] is None else raw[i]
        for i in range(len(canonical))
    ]


class _Side:
    """One side of a batch as flat arrays (see :func:`_flatten`)."""

    __slots__ = ("codes", "counts", "e", "ids", "s", "special", "splits", "zw")

    def __init__(self, ids, s, e, counts, splits, zw, special, codes):
        self.ids, self.s, self.e = ids, s, e
        self.counts, self.splits, self.zw = counts, splits, zw
        self.special, self.codes = special, codes

    def seq(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offsets (T, 2), role codes (T,), text mask (T,))`` of sequence ``b``."""
        lo, hi = int(self.splits[b]), int(self.splits[b + 1])
        s, e = self.s[lo:hi], self.e[lo:hi]
        return np.stack([s, e], axis=1), self.codes[self.ids[lo:hi]], e > s


def _flatten(
    ids: Sequence, offsets: Sequence, codes: np.ndarray, special: np.ndarray, side: str
) -> _Side:
    """Concatenate one side's sequences into flat arrays (one C-level concatenate per field)."""
    n = len(ids)
    counts = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    off_counts = np.fromiter(map(len, offsets), dtype=np.int64, count=n)
    if not np.array_equal(counts, off_counts):
        raise ValueError(
            f"{side}_offsets and {side}_ids differ in length for some sequence; pass the "
            "offset_mapping returned with those ids (one (start, end) pair per token)."
        )
    splits = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=splits[1:])
    if splits[-1]:
        flat_ids = np.concatenate(ids).astype(np.int64, copy=False)
        off = np.concatenate(offsets).astype(np.int64, copy=False).reshape(-1, 2)
    else:
        flat_ids, off = np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    if flat_ids.size and (flat_ids.min() < 0 or flat_ids.max() >= len(codes)):
        raise ValueError(
            f"{side}_ids holds ids outside [0, {len(codes)}); pass ids of the {side} tokenizer."
        )
    s, e = off[:, 0], off[:, 1]
    zero_width = e <= s
    zw = np.flatnonzero(zero_width) if zero_width.any() else np.zeros(0, dtype=np.int64)
    return _Side(flat_ids, s, e, counts, splits, zw, special, codes)


def _forbidden_cuts(texts: Sequence[str]) -> list[tuple[int, list[int]]]:
    """Per non-NFC text, the character positions a cut must not fall on (inside a cluster that
    NFC reorders or composes). NFC texts are skipped after one C-level check."""
    out = []
    for b, text in enumerate(texts):
        if text.isascii() or unicodedata.is_normalized("NFC", text):
            continue
        bad = []
        for p in range(1, len(text)):
            c = text[p]
            if c.isascii():
                continue
            window = text[max(0, p - 3) : p]
            composed = unicodedata.normalize("NFC", window + c)
            if unicodedata.combining(c) or len(composed) <= len(
                unicodedata.normalize("NFC", window)
            ):
                bad.append(p)
        if bad:
            out.append((b, bad))
    return out


# Cut matching uses a dense bitmap over the shifted coordinate line when it is at most this
# long (linear time); longer batches fall back to a sorted intersection.
_BITMAP_MAX = 1 << 26
# Overlapping offsets (byte-level split characters) in at most this many sequences are fixed
# per sequence; more, and the running max / suffix min run over the whole batch.
_OVERLAP_LOOP_MAX = 32


class _FlatResult:
    """Vectorized output: flat per-token chunk ids, flat per-chunk flags, row splits, plus the
    sequences the slow path computed (which replace the flat rows)."""

    __slots__ = (
        "c_splits",
        "one_to_one",
        "s_chunk",
        "s_splits",
        "slow",
        "t_chunk",
        "t_splits",
        "valid",
    )

    def __init__(self, s_chunk, t_chunk, one_to_one, valid, s_splits, t_splits, c_splits, slow):
        self.s_chunk, self.t_chunk, self.one_to_one = s_chunk, t_chunk, one_to_one
        self.valid = valid
        self.s_splits, self.t_splits, self.c_splits = s_splits, t_splits, c_splits
        self.slow = slow

    def to_list(self) -> list[SeqAlignment]:
        """Per-sequence views of the flat arrays, slow-path sequences swapped in."""
        make = SeqAlignment._unchecked
        sc, tc, oo, va = self.s_chunk, self.t_chunk, self.one_to_one, self.valid
        sp, tp, cp = self.s_splits.tolist(), self.t_splits.tolist(), self.c_splits.tolist()
        out = [
            make(sc[s0:s1], tc[t0:t1], oo[c0:c1], va[c0:c1])
            for s0, s1, t0, t1, c0, c1 in zip(
                sp[:-1], sp[1:], tp[:-1], tp[1:], cp[:-1], cp[1:], strict=True
            )
        ]
        for b, al in self.slow.items():
            out[b] = al
        return out

    def to_flat(self) -> FlatAlignment:
        """The batch as a :class:`FlatAlignment` (re-concatenated when slow rows exist)."""
        if self.slow:
            return FlatAlignment.from_list(self.to_list())
        return FlatAlignment(
            student_chunk=self.s_chunk,
            teacher_chunk=self.t_chunk,
            one_to_one=self.one_to_one,
            valid=self.valid,
            student_splits=self.s_splits,
            teacher_splits=self.t_splits,
            chunk_splits=self.c_splits,
        )


def _align_flat(s: _Side, t: _Side, n: int, forbidden=None, force_slow=False) -> _FlatResult:
    """Vectorized offset alignment of ``n`` flattened sequence pairs.

    Works on all tokens at once: positions are shifted by ``seq * stride`` so sequences never
    meet, and zero-width tokens before or after a sequence's text are given neutral positions
    instead of being removed. Rare cases are detected cheaply and sent to :func:`_align_one`
    per sequence (the fast path gives those sequences no chunks, then they are swapped in):
    forbidden cut positions (non-NFC text under a normalizing tokenizer), zero-width tokens on
    both sides (possible 1:1 special pairs) and zero-width tokens amid the text.
    ``force_slow`` sends every sequence there (tests check both paths agree).
    """
    stride = int(max(s.e.max(initial=0), t.e.max(initial=0))) + 1
    line = n * stride
    slow_seqs = [b for b, _ in forbidden or ()]
    s_first, s_ok, s_pos, s_has, s_mid = _side_cuts(s, stride, n, line)
    t_first, t_ok, t_pos, t_has, t_mid = _side_cuts(t, stride, n, line)
    slow_seqs += s_mid + t_mid
    if len(s.zw) and len(t.zw):
        s_zw = np.bincount(np.searchsorted(s.splits, s.zw, side="right") - 1, minlength=n)
        t_zw = np.bincount(np.searchsorted(t.splits, t.zw, side="right") - 1, minlength=n)
        slow_seqs += np.flatnonzero((s_zw > 0) & (t_zw > 0)).tolist()
    if force_slow:
        slow_seqs = range(n)
    # Common cuts: positions where both sides may cut (a valid cut position is unique on its
    # side over the batch; every other token holds False or a position of its own sequence).
    if line <= _BITMAP_MAX:
        mark = np.zeros(line + 1, dtype=bool)
        mark[s_pos] = s_ok
        t_cut = mark[t_pos]
        t_cut &= t_ok
        mark = np.zeros(line + 1, dtype=bool)
        mark[t_pos] = t_ok
        s_cut = mark[s_pos]
        s_cut &= s_ok
    else:
        common = np.intersect1d(s_pos[s_ok], t_pos[t_ok], assume_unique=True)
        s_cut = s_ok & np.isin(s_pos, common)
        t_cut = t_ok & np.isin(t_pos, common)
    both = s_has & t_has
    both[list(slow_seqs)] = False
    s_gap = t_gap = None
    if not both.all():  # no chunks where one side has no text (or the slow path decides)
        s_gap = np.repeat(~both, s.counts)
        t_gap = np.repeat(~both, t.counts)
        s_cut &= ~s_gap
        t_cut &= ~t_gap
    s_chunk, s_single, k = _local_ids(s, s_first, s_cut, both, s_gap)
    t_chunk, t_single, _ = _local_ids(t, t_first, t_cut, both, t_gap)
    c_splits = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.where(both, k + 1, 0), out=c_splits[1:])
    one_to_one = s_single & t_single
    valid = np.ones(len(one_to_one), dtype=bool)
    # A special token spelled inside the text (non-zero width) never decodes to the other side's
    # text, so its chunk is kept for the partition but masked out of the loss.
    for side, chunk in ((s, s_chunk), (t, t_chunk)):
        sp = side.special[side.ids]
        if sp.any():
            idx = np.flatnonzero(sp)
            idx = idx[chunk[idx] >= 0]
            seq = np.searchsorted(side.splits, idx, side="right") - 1
            valid[c_splits[seq] + chunk[idx]] = False

    slow: dict[int, SeqAlignment] = {}
    bad_of = dict(forbidden or ())
    for b in sorted(set(slow_seqs)):
        s_off, s_code, s_w = s.seq(b)
        t_off, t_code, t_w = t.seq(b)
        slow[b] = _align_one(s_off, s_code, s_w, t_off, t_code, t_w, bad_of.get(b, ()))
    return _FlatResult(s_chunk, t_chunk, one_to_one, valid, s.splits, t.splits, c_splits, slow)


def _side_cuts(side: _Side, stride: int, n: int, line: int):
    """Where one side may cut, over the batch (a cut falls before a token, between two text
    tokens of a sequence, where every token lies wholly before or after it).

    Returns:
        ``(first, ok, pos, has_text, middle)``: per sequence, the index of its first text
        token; per token, whether a cut may fall before it; per token, the shifted position
        (``seq * stride + char``) of that cut (unique among the ``ok`` ones; the others hold a
        position of their own sequence or ``line``); per sequence, whether it has text; the
        sequences with zero-width tokens amid their text (for the slow path).
    """
    counts, splits, zw = side.counts, side.splits, side.zw
    m = int(splits[-1])
    first = splits[:-1].copy()
    middle: list[int] = []
    if m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return first, empty.astype(bool), empty, counts > 0, middle
    shift = np.repeat(np.arange(0, n * stride, stride, dtype=np.int64), counts)
    s = side.s + shift
    e = side.e + shift
    has = counts > 0
    if len(zw):
        # Zero-width tokens leading or trailing a sequence's text get the sequence's first or
        # last position, which no comparison with its text tokens notices.
        seq = np.searchsorted(splits, zw, side="right") - 1
        rank = np.arange(len(zw)) - np.searchsorted(seq, seq)  # among the sequence's zw tokens
        n_zw = np.bincount(seq, minlength=n)
        pos = zw - splits[seq]
        leading = pos == rank
        trailing = counts[seq] - 1 - pos == n_zw[seq] - 1 - rank
        mid = ~(leading | trailing)
        if mid.any():
            middle = np.unique(seq[mid]).tolist()
        first += np.bincount(seq[leading], minlength=n)
        has = counts > n_zw
        neutral = seq * stride + np.where(leading | mid, 0, stride - 1)
        s[zw] = neutral
        e[zw] = neutral
    # Sequences are apart by the shift, so one comparison over the batch finds overlaps.
    ok = np.empty(m, dtype=bool)
    ok[0] = False
    np.less_equal(e[:-1], s[1:], out=ok[1:])
    if not ok.all():
        # Tokens of a byte-level split character share (or overlap) spans: no cut may fall
        # inside any token, so compare the running max of ends with the suffix min of starts
        # (a cut then sits at the suffix min), in the sequences that need it. Positions of
        # tokens no cut may precede go to the spare slot ``line``: they may repeat.
        bad = np.flatnonzero(~ok)
        seqs = np.unique(np.searchsorted(splits, bad, side="right") - 1).tolist()
        if len(seqs) > _OVERLAP_LOOP_MAX:
            s = np.minimum.accumulate(s[::-1])[::-1]
            np.less_equal(np.maximum.accumulate(e)[:-1], s[1:], out=ok[1:])
            s[~ok] = line
        else:
            for b in seqs:
                lo, hi = int(splits[b]), int(splits[b + 1])
                sm = np.minimum.accumulate(s[lo:hi][::-1])[::-1]
                np.less_equal(np.maximum.accumulate(e[lo:hi])[:-1], sm[1:], out=ok[lo + 1 : hi])
                s[lo:hi] = np.where(ok[lo:hi], sm, line)
    # Cuts fall only before a text token that is not its sequence's first. (Those tokens'
    # positions may equal a zero-width token's neutral one: both hold False.)
    ok[first[has]] = False
    if len(zw):
        ok[zw] = False
    # A cut sits at the next token's start: text no token covers (an NFC normalizer maps a
    # composed "é" back to "e" only, leaving the combining mark uncovered) stays with the token
    # before it, which is the token that actually spelled it.
    return first, ok, s, has, middle


def _local_ids(side: _Side, first, cut, both, gap):
    """Per-token chunk ids of one side (local to each sequence, -1 for gaps), per chunk of the
    batch whether this side holds one token, and per sequence its number of common cuts.

    ``cut`` (bool per token, a common cut falls before it) becomes the chunk-start mask.
    """
    m = int(side.splits[-1])
    starts = first[both]
    # Common cuts per sequence (``reduceat`` over the sequences that have tokens).
    v = cut.astype(np.int64)
    k = np.zeros(len(side.counts), dtype=np.int64)
    nonempty = side.counts > 0
    if m:
        k[nonempty] = np.add.reduceat(v, side.splits[:-1][nonempty])
    # Running count of cuts, reset to 0 at each sequence's first text token.
    kb = k[both]
    v[starts] = -np.concatenate(([0], kb[:-1]))
    local = np.cumsum(v)
    local[side.zw] = -1
    # A chunk starts at each cut and at each sequence's first text token; it holds one token
    # on this side when the next token starts a chunk or belongs to none.
    cut[starts] = True
    end = np.empty(m + 1, dtype=bool)
    end[:m] = cut
    end[m] = True
    end[side.zw] = True
    if gap is not None:
        local[gap] = -1
        end[:m] |= gap
    single = end[np.flatnonzero(cut) + 1]
    return local, single, k


def _align_one(s_off, s_code, s_w, t_off, t_code, t_w, bad=()) -> SeqAlignment:
    """Slow path: offset-align one sequence pair in plain Python (the definition the vectorized
    path implements), plus the rare cases: forbidden cut positions ``bad`` and zero-width tokens
    of the same role at the same chunk boundary on both sides, paired 1:1."""
    bad = set(bad)

    def cuts(off, w):
        txt = np.flatnonzero(w).tolist()
        starts = [int(off[i, 0]) for i in txt]
        ends = [int(off[i, 1]) for i in txt]
        smin = starts[:]
        for k in range(len(smin) - 2, -1, -1):
            smin[k] = min(smin[k], smin[k + 1])
        out: dict[int, int] = {}  # cut position -> text index of the token after it
        run = -1
        for k in range(len(txt) - 1):
            run = max(run, ends[k])
            if run <= smin[k + 1]:
                out[smin[k + 1]] = k + 1
        return txt, out

    s_txt, s_cuts = cuts(s_off, s_w)
    t_txt, t_cuts = cuts(t_off, t_w)
    sc = np.full(len(s_w), -1, dtype=np.int64)
    tc = np.full(len(t_w), -1, dtype=np.int64)
    n_chunks = 0
    if s_txt and t_txt:
        common = (s_cuts.keys() & t_cuts.keys()) - bad
        n_chunks = len(common) + 1
        for txt, side_cuts, chunk in ((s_txt, s_cuts, sc), (t_txt, t_cuts, tc)):
            starts = {side_cuts[p] for p in common}
            cid = 0
            for k, i in enumerate(txt):
                cid += k in starts
                chunk[i] = cid
    s_cnt = np.bincount(sc[sc >= 0], minlength=n_chunks)
    t_cnt = np.bincount(tc[tc >= 0], minlength=n_chunks)
    oo = (s_cnt == 1) & (t_cnt == 1)
    va = np.ones(n_chunks, dtype=bool)
    va[sc[(sc >= 0) & (s_code >= 0)]] = False
    va[tc[(tc >= 0) & (t_code >= 0)]] = False
    if not s_w.all() and not t_w.all():
        sc, tc, oo, va = _pair_zero_width(sc, tc, oo, va, s_code, t_code, s_w, t_w)
    return SeqAlignment(sc, tc, oo, va)


def _pair_zero_width(sc, tc, oo, va, s_code, t_code, s_w, t_w):
    """Zero-width tokens on both sides of one sequence: those of the same role at the same chunk
    boundary are paired 1:1 and the chunk ids renumbered."""
    s_slots = _zero_width_slots(sc, s_w, s_code)
    t_slots = _zero_width_slots(tc, t_w, t_code)
    pairs: list[tuple[float, int, int]] = []  # (boundary key, student idx, teacher idx)
    for key, s_list in s_slots.items():
        t_list = t_slots.get(key)
        if t_list is None or [c for _, c in s_list] != [c for _, c in t_list]:
            continue
        if any(c < 0 for _, c in s_list):
            continue
        pairs.extend((key, si, ti) for (si, _), (ti, _) in zip(s_list, t_list, strict=True))
    if not pairs:
        return sc, tc, oo, va
    pairs.sort()
    n_old = len(oo)
    keys = np.array([k for k, _, _ in pairs])
    # New id of an old chunk k: k plus the number of inserted chunks at boundaries before it.
    shift_old = np.searchsorted(keys, np.arange(n_old), side="left")
    new_sc = sc.copy()
    new_tc = tc.copy()
    new_sc[sc >= 0] += shift_old[sc[sc >= 0]]
    new_tc[tc >= 0] += shift_old[tc[tc >= 0]]
    total = n_old + len(pairs)
    new_oo = np.zeros(total, dtype=bool)
    new_va = np.zeros(total, dtype=bool)
    old_ids = np.arange(n_old) + shift_old
    new_oo[old_ids] = oo
    new_va[old_ids] = va
    for rank, (key, si, ti) in enumerate(pairs):
        # Old chunks before this boundary (floor(key) + 1) plus the pairs inserted earlier.
        cid = int(np.floor(key)) + 1 + rank
        new_sc[si] = cid
        new_tc[ti] = cid
        new_oo[cid] = True
        new_va[cid] = True
    return new_sc, new_tc, new_oo, new_va


def _zero_width_slots(chunk, width_ok, code) -> dict[float, list[tuple[int, int]]]:
    """Group zero-width tokens by the chunk boundary they sit on (key = previous chunk + 0.5).

    Tokens that sit inside a chunk (between two of its tokens) get no slot and stay gaps.
    """
    slots: dict[float, list[tuple[int, int]]] = {}
    prev_chunk, prev_idx = -1, -1
    n = len(chunk)
    for i in range(n):
        if width_ok[i]:
            prev_chunk, prev_idx = int(chunk[i]), i
            continue
        if prev_idx >= 0 and prev_chunk < 0:
            continue  # after a gap-only token: no defined boundary
        nxt = next((int(chunk[j]) for j in range(i + 1, n) if width_ok[j]), None)
        if nxt is not None and nxt == prev_chunk and prev_idx >= 0:
            continue  # inside a chunk
        slots.setdefault(prev_chunk + 0.5, []).append((i, int(code[i])))
    return slots


def align_dp(
    student_keys: Sequence[bytes],
    teacher_keys: Sequence[bytes],
    student_bytes: Sequence[bytes | None] | None = None,
    teacher_bytes: Sequence[bytes | None] | None = None,
) -> SeqAlignment:
    """The paper's DP aligner over canonical token keys, anchored at unique trigrams.

    Args:
        student_keys: Per student token, its comparison key (true bytes for text, a NUL-prefixed
            role for specials; see :class:`TokenizerPairAligner`).
        teacher_keys: Same for the teacher.
        student_bytes: Per token true bytes (``None`` for specials), used to check that a merged
            mismatch region spells the same text on both sides; defaults to the keys.
        teacher_bytes: Same for the teacher.

    Returns:
        The :class:`SeqAlignment`.
    """
    a, b = list(student_keys), list(teacher_keys)
    a_bytes = list(student_bytes) if student_bytes is not None else _bytes_of(a)
    b_bytes = list(teacher_bytes) if teacher_bytes is not None else _bytes_of(b)
    # Byte position of each token in the spelled text. When both sides spell the same number of
    # bytes, "equal" also requires the same position: without it, repeated strings let the DP
    # match a token with an equal token elsewhere (gaps are cheaper than mismatches).
    pa = np.concatenate(([0], np.cumsum([len(x or b"") for x in a_bytes]))).tolist()
    pb = np.concatenate(([0], np.cumsum([len(x or b"") for x in b_bytes]))).tolist()
    use_pos = pa[-1] == pb[-1]
    steps: list[tuple[int, int, bool]] = []  # (student count, teacher count, exact)
    i0 = j0 = 0
    for ai, bj in _anchors(a, b, pa if use_pos else None, pb if use_pos else None):
        steps.extend(_dp_segment(a[i0:ai], b[j0:bj], pa[i0:ai], pb[j0:bj], use_pos))
        steps.extend([(1, 1, True)] * _ANCHOR_N)
        i0, j0 = ai + _ANCHOR_N, bj + _ANCHOR_N
    steps.extend(_dp_segment(a[i0:], b[j0:], pa[i0:-1], pb[j0:-1], use_pos))
    return _steps_to_alignment(steps, a_bytes, b_bytes, len(a), len(b))


def _bytes_of(keys: list[bytes]) -> list[bytes | None]:
    """Text bytes from keys: NUL-prefixed keys are specials (no text)."""
    return [None if k[:1] == b"\x00" else k for k in keys]


def _anchors(
    a: list[bytes], b: list[bytes], pa: list[int] | None = None, pb: list[int] | None = None
) -> list[tuple[int, int]]:
    """Start positions of trigrams occurring exactly once on each side, increasing on both
    (and, given byte positions ``pa`` / ``pb``, starting at the same byte)."""
    n = _ANCHOR_N

    def unique(seq: list[bytes]) -> dict[tuple[bytes, ...], int]:
        seen: dict[tuple[bytes, ...], int] = {}
        for i in range(len(seq) - n + 1):
            g = tuple(seq[i : i + n])
            seen[g] = -1 if g in seen else i
        return {g: i for g, i in seen.items() if i >= 0}

    ua, ub = unique(a), unique(b)
    out: list[tuple[int, int]] = []
    last_i = last_j = 0
    for g, i in sorted(ua.items(), key=lambda kv: kv[1]):
        j = ub.get(g)
        # Greedy in student order; skip anchors that would cross or overlap the previous one.
        if j is None or (pa is not None and pa[i] != pb[j]):
            continue
        if i >= last_i and j >= last_j:
            out.append((i, j))
            last_i, last_j = i + n, j + n
    return out


def _dp_segment(
    a: list[bytes], b: list[bytes], pa: list[int], pb: list[int], use_pos: bool
) -> list[tuple[int, int, bool]]:
    """Needleman-Wunsch-style DP with 1:k / k:1 span steps on one anchor-free segment.

    ``pa`` / ``pb`` are the tokens' byte positions, compared only when ``use_pos``.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return [(1, 0, False)] * n + [(0, 1, False)] * m
    neg = float("-inf")
    score = [[neg] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int, bool]]] = [[(0, 0, False)] * (m + 1) for _ in range(n + 1)]
    score[0][0] = 0.0
    for i in range(n + 1):
        row, brow = score[i], back[i]
        for j in range(m + 1):
            if i == 0 and j == 0:
                continue
            best, arg = neg, (0, 0, False)
            if i and j:
                eq = a[i - 1] == b[j - 1] and (not use_pos or pa[i - 1] == pb[j - 1])
                v = score[i - 1][j - 1] + (_MATCH if eq else _MISMATCH)
                best, arg = v, (1, 1, eq)
            # Span steps: one token on one side equals the concatenation of k on the other.
            for k in range(2, _MAX_SPAN + 1):
                if i >= 1 and j >= k:
                    v = score[i - 1][j - k] + _SPAN_PER_TOKEN * k
                    if (
                        v > best
                        and (not use_pos or pa[i - 1] == pb[j - k])
                        and a[i - 1] == b"".join(b[j - k : j])
                    ):
                        best, arg = v, (1, k, True)
                if j >= 1 and i >= k:
                    v = score[i - k][j - 1] + _SPAN_PER_TOKEN * k
                    if (
                        v > best
                        and (not use_pos or pb[j - 1] == pa[i - k])
                        and b[j - 1] == b"".join(a[i - k : i])
                    ):
                        best, arg = v, (k, 1, True)
            if i and score[i - 1][j] + _GAP > best:
                best, arg = score[i - 1][j] + _GAP, (1, 0, False)
            if j and row[j - 1] + _GAP > best:
                best, arg = row[j - 1] + _GAP, (0, 1, False)
            row[j], brow[j] = best, arg
    steps: list[tuple[int, int, bool]] = []
    i, j = n, m
    while i or j:
        step = back[i][j]
        steps.append(step)
        i, j = i - step[0], j - step[1]
    steps.reverse()
    return steps


def _steps_to_alignment(steps, a_bytes, b_bytes, n_a: int, n_b: int) -> SeqAlignment:
    """Turn DP steps into chunk ids; merge runs of non-exact steps into one region chunk."""
    sc = np.full(n_a, -1, dtype=np.int64)
    tc = np.full(n_b, -1, dtype=np.int64)
    one_to_one: list[bool] = []
    valid: list[bool] = []
    i = j = 0
    region_a: list[int] = []
    region_b: list[int] = []

    def close_region() -> None:
        # Specials inside a mismatch region are gaps; the text tokens form one chunk if both
        # sides have any, valid only when they spell the same (NFC-normalized) text.
        ta = [x for x in region_a if a_bytes[x] is not None]
        tb = [x for x in region_b if b_bytes[x] is not None]
        if ta and tb:
            cid = len(one_to_one)
            sc[ta] = cid
            tc[tb] = cid
            same = _nfc(b"".join(a_bytes[x] for x in ta)) == _nfc(b"".join(b_bytes[x] for x in tb))
            one_to_one.append(len(ta) == 1 and len(tb) == 1)
            valid.append(same)
        region_a.clear()
        region_b.clear()

    for da, db, exact in steps:
        if exact:
            close_region()
            cid = len(one_to_one)
            sc[i : i + da] = cid
            tc[j : j + db] = cid
            one_to_one.append(da == 1 and db == 1)
            valid.append(True)
        else:
            region_a.extend(range(i, i + da))
            region_b.extend(range(j, j + db))
        i, j = i + da, j + db
    close_region()
    return SeqAlignment(
        student_chunk=sc,
        teacher_chunk=tc,
        one_to_one=np.array(one_to_one, dtype=bool),
        valid=np.array(valid, dtype=bool),
    )


def _nfc(data: bytes) -> str:
    """NFC text of bytes (a tokenizer with an NFC normalizer spells composed characters)."""
    return unicodedata.normalize("NFC", bytes_to_text(data))


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
    for name, given, need in (
        ("student_len", student_len, ts),
        ("teacher_len", teacher_len, tt),
        ("num_chunks", num_chunks, c),
    ):
        if given is not None and given < need:
            raise ValueError(f"{name}={given} is shorter than the batch needs ({need}); raise it.")
    ts, tt, c = student_len or ts, teacher_len or tt, num_chunks or c
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
