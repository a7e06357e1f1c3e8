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
from xbench.tokenpair.types import PairAlignment, SeqAlignment

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
        n = len(student_ids)
        lens = [len(teacher_ids), len(student_offsets), len(teacher_offsets)]
        if any(x != n for x in lens):
            raise ValueError(
                f"align_batch got {n} student sequences but {lens} teacher ids / student "
                "offsets / teacher offsets; pass one entry per sequence in each list."
            )
        if n == 0:
            return []
        s = _flatten(student_ids, student_offsets, self._s_code, "student")
        t = _flatten(teacher_ids, teacher_offsets, self._t_code, "teacher")
        forbidden = None
        if texts is not None and self._normalizes:
            forbidden = _forbidden_cuts(texts)
        return _align_flat(s, t, n, forbidden)

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


class _Flat:
    """One side of a batch as flat arrays (see :func:`_flatten`)."""

    __slots__ = ("code", "counts", "e", "s", "seq", "starts", "text")

    def __init__(self, s, e, seq, code, counts, starts, text):
        self.s, self.e, self.seq, self.code = s, e, seq, code
        self.counts, self.starts, self.text = counts, starts, text


def _flatten(ids: Sequence, offsets: Sequence, codes: np.ndarray, side: str) -> _Flat:
    """Concatenate one side's sequences into flat arrays (one C-level concatenate per field)."""
    counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    off_counts = np.fromiter(map(len, offsets), dtype=np.int64, count=len(offsets))
    if not np.array_equal(counts, off_counts):
        raise ValueError(
            f"{side}_offsets and {side}_ids differ in length for some sequence; pass the "
            "offset_mapping returned with those ids (one (start, end) pair per token)."
        )
    total = int(counts.sum())
    flat_ids = np.concatenate(ids).astype(np.int64, copy=False) if total else np.zeros(0, np.int64)
    off = np.concatenate(offsets).astype(np.int64, copy=False) if total else np.zeros((0, 2))
    off = off.reshape(-1, 2).astype(np.int64, copy=False)
    if flat_ids.size and (flat_ids.min() < 0 or flat_ids.max() >= len(codes)):
        raise ValueError(
            f"{side}_ids holds ids outside [0, {len(codes)}); pass ids of the {side} tokenizer."
        )
    seq = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return _Flat(off[:, 0], off[:, 1], seq, codes[flat_ids], counts, starts, None)


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


# Cut membership uses a dense bitmap over the shifted coordinate line when it is at most this
# long (linear time); longer batches fall back to binary search.
_BITMAP_MAX = 1 << 26


def _align_flat(s: _Flat, t: _Flat, n: int, forbidden=None) -> list[SeqAlignment]:
    """Vectorized offset alignment of ``n`` flattened sequence pairs."""
    stride = int(max(s.e.max(initial=0), t.e.max(initial=0))) + 1
    s_txt, s_pos, s_after = _text_cuts(s, stride)
    t_txt, t_pos, t_after = _text_cuts(t, stride)
    s_common = _member(s_pos, t_pos, n * stride)
    t_common = _member(t_pos, s_pos, n * stride)
    if forbidden:
        bad = np.concatenate([b * stride + np.asarray(p, dtype=np.int64) for b, p in forbidden])
        s_common &= ~_member(s_pos, bad, n * stride)
        t_common &= ~_member(t_pos, bad, n * stride)
    s_seq, t_seq = s.seq[s_txt], t.seq[t_txt]
    s_has_txt = np.bincount(s_seq, minlength=n) > 0
    t_has_txt = np.bincount(t_seq, minlength=n) > 0
    both = s_has_txt & t_has_txt
    # Chunks per sequence: common cuts + 1 where both sides have text, else none.
    n_chunks = np.where(both, np.bincount(s_seq[s_after[s_common]], minlength=n) + 1, 0)
    base = np.concatenate(([0], np.cumsum(n_chunks)[:-1]))
    total = int(n_chunks.sum())
    s_gid = _global_ids(s_seq, s_after[s_common], base, both)
    t_gid = _global_ids(t_seq, t_after[t_common], base, both)

    s_in, t_in = s_gid >= 0, t_gid >= 0
    s_cnt = np.bincount(s_gid[s_in], minlength=total)
    t_cnt = np.bincount(t_gid[t_in], minlength=total)
    one_to_one = (s_cnt == 1) & (t_cnt == 1)
    valid = np.ones(total, dtype=bool)
    # A special token spelled inside the text (non-zero width) never decodes to the other side's
    # text, so its chunk is kept for the partition but masked out of the loss.
    valid[s_gid[s_in & (s.code[s_txt] >= 0)]] = False
    valid[t_gid[t_in & (t.code[t_txt] >= 0)]] = False

    s_chunk = np.full(len(s.s), -1, dtype=np.int64)
    t_chunk = np.full(len(t.s), -1, dtype=np.int64)
    s_chunk[s_txt] = np.where(s_in, s_gid - base[s_seq], -1)
    t_chunk[t_txt] = np.where(t_in, t_gid - base[t_seq], -1)

    # Sequences needing the slow path: zero-width tokens on both sides (possible pairs).
    s_zw = np.bincount(s.seq[s.e <= s.s], minlength=n) > 0
    t_zw = np.bincount(t.seq[t.e <= t.s], minlength=n) > 0
    slow = (s_zw & t_zw).tolist()
    s_b = np.append(s.starts, len(s.s)).tolist()
    t_b = np.append(t.starts, len(t.s)).tolist()
    c_b = np.append(base, total).tolist()
    out: list[SeqAlignment] = []
    for b in range(n):
        sc = s_chunk[s_b[b] : s_b[b + 1]]
        tc = t_chunk[t_b[b] : t_b[b + 1]]
        oo = one_to_one[c_b[b] : c_b[b + 1]]
        va = valid[c_b[b] : c_b[b + 1]]
        if slow[b]:
            sc, tc, oo, va = _fix_sequence(sc, tc, oo, va, s, t, b, s_b, t_b)
        out.append(SeqAlignment(sc, tc, oo, va))
    return out


def _member(x: np.ndarray, ref: np.ndarray, line: int) -> np.ndarray:
    """``bool`` mask of the entries of ``x`` present in ``ref`` (both non-negative ints)."""
    if len(x) == 0 or len(ref) == 0:
        return np.zeros(len(x), dtype=bool)
    if line <= _BITMAP_MAX:
        mark = np.zeros(line + 1, dtype=bool)
        mark[ref] = True
        return mark[x]
    ref = np.sort(ref)
    idx = np.minimum(np.searchsorted(ref, x), len(ref) - 1)
    return ref[idx] == x


def _global_ids(seq: np.ndarray, cut_after: np.ndarray, base: np.ndarray, both: np.ndarray):
    """Global chunk id of each text token (-1 where the other side has no text in the sequence).

    ``cut_after`` holds text-token indices followed by a common cut; the local id is the running
    count of such cuts since the sequence's first text token.
    """
    m = len(seq)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    bump = np.zeros(m, dtype=np.int64)
    bump[cut_after + 1] = 1
    running = np.cumsum(bump)
    # Text tokens are sorted by sequence: one binary search per sequence finds its first token.
    first = np.minimum(np.searchsorted(seq, np.arange(len(base))), m - 1)
    gid = running + (base - running[first])[seq]
    if both.all():
        return gid
    return np.where(both[seq], gid, -1)


def _text_cuts(side: _Flat, stride: int):
    """Cuts between consecutive text (non-zero-width) tokens of one side.

    Returns:
        ``(text_idx, cut_pos, cut_after)``: flat indices of text tokens, the shifted position
        (``seq * stride + char``) of each valid cut, and the text-token index (into
        ``text_idx``) each cut follows.
    """
    text_idx = np.flatnonzero(side.e > side.s)
    seq = side.seq[text_idx]
    shift = seq * stride
    s = side.s[text_idx] + shift
    e = side.e[text_idx] + shift
    # Running max of ends / suffix min of starts: tokens of a byte-level split character share
    # (or overlap) spans, and no cut may fall inside any token. The shift keeps sequences apart.
    ce = np.maximum.accumulate(e) if len(e) else e
    smin = np.minimum.accumulate(s[::-1])[::-1] if len(s) else s
    ok = (ce[:-1] <= smin[1:]) & (seq[1:] == seq[:-1])
    after = np.flatnonzero(ok)
    # A cut sits at the next token's start: text no token covers (an NFC normalizer maps a
    # composed "é" back to "e" only, leaving the combining mark uncovered) stays with the token
    # before it, which is the token that actually spelled it.
    return text_idx, smin[after + 1], after


def _fix_sequence(sc, tc, oo, va, s: _Flat, t: _Flat, b: int, s_bounds, t_bounds):
    """Slow path for one sequence with zero-width tokens on both sides: those of the same role at
    the same chunk boundary are paired 1:1 and the chunk ids renumbered."""
    sc, tc = sc.copy(), tc.copy()
    s_code = s.code[s_bounds[b] : s_bounds[b + 1]]
    t_code = t.code[t_bounds[b] : t_bounds[b + 1]]
    s_w = s.e[s_bounds[b] : s_bounds[b + 1]] > s.s[s_bounds[b] : s_bounds[b + 1]]
    t_w = t.e[t_bounds[b] : t_bounds[b + 1]] > t.s[t_bounds[b] : t_bounds[b + 1]]
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
    alignments: Sequence[SeqAlignment],
    student_len: int | None = None,
    teacher_len: int | None = None,
    num_chunks: int | None = None,
) -> PairAlignment:
    """Right-pad per-sequence alignments into a :class:`PairAlignment` batch.

    Args:
        alignments: One :class:`SeqAlignment` per sequence (token 0 = position 0).
        student_len: Padded student length Ts (default: longest).
        teacher_len: Padded teacher length Tt (default: longest).
        num_chunks: Padded chunk count C (default: most chunks).

    Returns:
        The batch; ``chunk_mask`` is True for valid chunks that contain neither side's position 0.
    """
    bsz = len(alignments)
    if bsz == 0:
        raise ValueError("collate_alignments got an empty list; pass at least one alignment.")
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
