"""The X-Token paper's DP aligner over canonical tokens, anchored at unique trigrams.

See :mod:`xbench.tokenpair.align` for the method.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from xbench.tokenpair.canon import bytes_to_text
from xbench.tokenpair.types import SeqAlignment

# DP scores from the paper.
_MATCH, _MISMATCH, _GAP, _SPAN_PER_TOKEN = 3.0, -3.0, -1.5, 1.5
_MAX_SPAN = 4
_ANCHOR_N = 3


def _dp_keys(canonical: list[str], raw: list[bytes | None], special: list[bool]) -> list[bytes]:
    """DP comparison key per id: true bytes for text (so split multi-byte characters concatenate
    correctly), a NUL-prefixed role for specials (never equal to any text)."""
    return [
        b"\x00" + canonical[i].encode() if special[i] or raw[i] is None else raw[i]
        for i in range(len(canonical))
    ]


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
