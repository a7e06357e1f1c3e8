"""Vectorized offset aligner: the finest common segmentation of two tokenizations' offsets.

See :mod:`xbench.tokenpair.align` for the method. The whole batch is handled as flat numpy arrays
(sequences separated by a position stride); rare sequences go to the per-sequence slow path in
:mod:`xbench.tokenpair.align_offset_slow`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from xbench.tokenpair.align_offset_slow import align_one
from xbench.tokenpair.canon import token_table
from xbench.tokenpair.types import FlatAlignment, SeqAlignment

__all__ = ["FlatResult", "OffsetAligner"]


class OffsetAligner:
    """The offset method for one student/teacher tokenizer pair, over a batch.

    Args:
        student_tokenizer: Fast tokenizer of the student.
        teacher_tokenizer: Fast tokenizer of the teacher.
    """

    def __init__(self, student_tokenizer, teacher_tokenizer) -> None:
        s_table, t_table = token_table(student_tokenizer), token_table(teacher_tokenizer)
        # One integer code per canonical special role shared by both sides, -1 for text tokens:
        # lets the vectorized path compare specials across vocabularies without strings.
        roles: dict[str, int] = {}
        self._s_code = _role_codes(s_table.canonical, s_table.special, roles)
        self._t_code = _role_codes(t_table.canonical, t_table.special, roles)
        self._s_special, self._t_special = self._s_code >= 0, self._t_code >= 0
        self._normalizes = any(
            tok.backend_tokenizer.normalizer is not None
            for tok in (student_tokenizer, teacher_tokenizer)
        )

    def align(
        self,
        student_ids: Sequence,
        teacher_ids: Sequence,
        student_offsets: Sequence,
        teacher_offsets: Sequence,
        texts: Sequence[str] | None = None,
        force_slow: bool = False,
    ) -> FlatResult:
        """Check, flatten and align a batch (arguments of ``TokenizerPairAligner.align_batch``).

        ``force_slow`` sends every sequence through the per-sequence path (tests compare both).
        """
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


def _role_codes(canonical: list[str], special: list[bool], roles: dict[str, int]) -> np.ndarray:
    """``int64 (V,)``: shared role code of each special id, -1 for text tokens."""
    codes = np.full(len(canonical), -1, dtype=np.int64)
    for i, is_special in enumerate(special):
        if is_special:
            codes[i] = roles.setdefault(canonical[i], len(roles))
    return codes


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


class FlatResult:
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


def _align_flat(s: _Side, t: _Side, n: int, forbidden=None, force_slow=False) -> FlatResult:
    """Vectorized offset alignment of ``n`` flattened sequence pairs.

    Works on all tokens at once: positions are shifted by ``seq * stride`` so sequences never
    meet, and zero-width tokens before or after a sequence's text are given neutral positions
    instead of being removed. Rare cases are detected cheaply and sent to :func:`align_one`
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
        slow[b] = align_one(s_off, s_code, s_w, t_off, t_code, t_w, bad_of.get(b, ()))
    return FlatResult(s_chunk, t_chunk, one_to_one, valid, s.splits, t.splits, c_splits, slow)


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
