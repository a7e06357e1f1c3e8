"""The X-Token paper's DP aligner over canonical tokens, anchored at unique trigrams.

See :mod:`xbench.tokenpair.align` for the method. Byte positions keep the DP honest: two tokens
are "equal" only when they have the same key *and* start and end at the same place in the text,
so repeated strings can never be paired across the text. Positions are measured on one line
both sides share even when their byte totals differ:

- a special token spelled inside the text (``<|im_start|>`` that one tokenizer keeps whole and
  the other spells as ``<``, ``|``, ...) advances the position by the bytes of its content, while
  a special the post-processor added (a BOS, an appended EOS) is zero-width;
- when the spelled text is not NFC (a normalizing tokenizer composes ``e`` + U+0301 into ``é``,
  the other side keeps both), positions are byte lengths of the NFC of each prefix, which agree
  wherever the two sides' cuts cover the same original text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from xbench.tokenpair.canon import bytes_to_text
from xbench.tokenpair.types import SeqAlignment

__all__ = ["align_dp", "dp_keys"]

# DP scores from the paper.
_MATCH, _MISMATCH, _GAP, _SPAN_PER_TOKEN = 3.0, -3.0, -1.5, 1.5
_MAX_SPAN = 4
_ANCHOR_N = 3


def dp_keys(canonical: list[str], raw: list[bytes | None], special: list[bool]) -> list[bytes]:
    """DP comparison key of every id of one vocabulary (index = id).

    Args:
        canonical: Canonical string per id (``canon.TokenTable.canonical``).
        raw: True bytes per id, ``None`` for specials (``canon.TokenTable.raw_bytes``).
        special: Whether each id is a special token.

    Returns:
        True bytes for text (so split multi-byte characters concatenate correctly), a
        NUL-prefixed role for specials (never equal to any text).
    """
    return [
        b"\x00" + canonical[i].encode() if special[i] or raw[i] is None else raw[i]
        for i in range(len(canonical))
    ]


def _text_positions(spelled: Sequence[bytes]) -> list[int]:
    """Position of every token boundary on the NFC text line, ``len(spelled) + 1`` entries.

    Args:
        spelled: Per token, the bytes it spells in the text (``b""`` for a zero-width special).

    Returns:
        ``pos`` with ``pos[k]`` = UTF-8 length of NFC(text of tokens ``0..k-1``). For NFC text
        (almost all) this is the running byte count, at the cost of one C-level check.
    """
    pos = [0]
    pos.extend(np.cumsum([len(x) for x in spelled]).tolist())
    data = b"".join(spelled)
    if data.isascii():
        return pos
    # surrogateescape: a prefix may end inside a character split across byte tokens.
    if unicodedata.is_normalized("NFC", data.decode("utf-8", "surrogateescape")):
        return pos
    return [
        len(
            unicodedata.normalize("NFC", data[:p].decode("utf-8", "surrogateescape")).encode(
                "utf-8", "surrogateescape"
            )
        )
        for p in pos
    ]


def align_dp(
    student_keys: Sequence[bytes],
    teacher_keys: Sequence[bytes],
    student_bytes: Sequence[bytes | None] | None = None,
    teacher_bytes: Sequence[bytes | None] | None = None,
    student_spelled: Sequence[bytes] | None = None,
    teacher_spelled: Sequence[bytes] | None = None,
) -> SeqAlignment:
    """The paper's DP aligner over canonical token keys, anchored at unique trigrams.

    Args:
        student_keys: Per student token, its comparison key (true bytes for text, a NUL-prefixed
            role for specials; see :class:`TokenizerPairAligner`).
        teacher_keys: Same for the teacher.
        student_bytes: Per token true bytes (``None`` for specials), used to check that a merged
            mismatch region spells the same text on both sides; defaults to the keys.
        teacher_bytes: Same for the teacher.
        student_spelled: Per token the bytes it occupies in the text: its bytes for text, its
            content for a special written inside the text, ``b""`` for a special the
            post-processor added. Defaults to the true bytes with every special zero-width.
        teacher_spelled: Same for the teacher.

    Returns:
        The :class:`SeqAlignment`. Chunks pair tokens at the same text positions only; a special
        inside the text joins its region's chunk (invalid), a zero-width special is a gap unless
        the other side has one of the same role at the same position.
    """
    a, b = list(student_keys), list(teacher_keys)
    a_bytes = list(student_bytes) if student_bytes is not None else _bytes_of(a)
    b_bytes = list(teacher_bytes) if teacher_bytes is not None else _bytes_of(b)
    a_sp = list(student_spelled) if student_spelled is not None else [x or b"" for x in a_bytes]
    b_sp = list(teacher_spelled) if teacher_spelled is not None else [x or b"" for x in b_bytes]
    if len(a_sp) != len(a) or len(b_sp) != len(b):
        raise ValueError("student_spelled / teacher_spelled need one entry per token.")
    # Equal keys count as a match only at equal start and end positions; without that, repeated
    # strings let the DP pair a token with an equal token elsewhere (gaps cost less than
    # mismatches), and an earlier difference in byte totals would shift every later pair.
    pa, pb = _text_positions(a_sp), _text_positions(b_sp)
    steps: list[tuple[int, int, bool]] = []  # (student count, teacher count, exact)
    i0 = j0 = 0
    for ai, bj in _anchors(a, b, pa, pb):
        steps.extend(_dp_segment(a[i0:ai], b[j0:bj], pa[i0 : ai + 1], pb[j0 : bj + 1]))
        steps.extend([(1, 1, True)] * _ANCHOR_N)
        i0, j0 = ai + _ANCHOR_N, bj + _ANCHOR_N
    steps.extend(_dp_segment(a[i0:], b[j0:], pa[i0:], pb[j0:]))
    a_kind = _kinds(a_bytes, pa)
    b_kind = _kinds(b_bytes, pb)
    return _steps_to_alignment(steps, a_bytes, b_bytes, a_kind, b_kind)


def _bytes_of(keys: list[bytes]) -> list[bytes | None]:
    """Text bytes from keys: NUL-prefixed keys are specials (no text)."""
    return [None if k[:1] == b"\x00" else k for k in keys]


# Token kinds for chunking: text, a special written inside the text, a zero-width special.
_TEXT, _INTEXT, _ZW = 0, 1, 2


def _kinds(raw: list[bytes | None], pos: list[int]) -> list[int]:
    """Kind of each token from its true bytes (``None`` = special) and its position span."""
    return [
        _TEXT if raw[i] is not None else (_INTEXT if pos[i + 1] > pos[i] else _ZW)
        for i in range(len(raw))
    ]


def _anchors(a: list[bytes], b: list[bytes], pa: list[int], pb: list[int]) -> list[tuple[int, int]]:
    """Start positions of trigrams occurring exactly once on each side, increasing on both and
    covering the same text span (byte positions ``pa`` / ``pb``, one more than tokens)."""
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
        if j is None or any(pa[i + k] != pb[j + k] for k in range(n + 1)):
            continue
        # Greedy in student order; skip anchors that would cross or overlap the previous one.
        if i >= last_i and j >= last_j:
            out.append((i, j))
            last_i, last_j = i + n, j + n
    return out


def _dp_segment(
    a: list[bytes], b: list[bytes], pa: list[int], pb: list[int]
) -> list[tuple[int, int, bool]]:
    """Needleman-Wunsch-style DP with 1:k / k:1 span steps on one anchor-free segment.

    ``pa`` / ``pb`` are the byte positions of the segment's token boundaries (one more entry
    than tokens); a step is exact only when both sides also start and end at the same position.
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
        end_a = pa[i]
        for j in range(m + 1):
            if i == 0 and j == 0:
                continue
            best, arg = neg, (0, 0, False)
            same_end = end_a == pb[j]
            if i and j:
                eq = same_end and pa[i - 1] == pb[j - 1] and a[i - 1] == b[j - 1]
                v = score[i - 1][j - 1] + (_MATCH if eq else _MISMATCH)
                best, arg = v, (1, 1, eq)
            # Span steps: one token on one side equals the concatenation of k on the other.
            if same_end:
                for k in range(2, _MAX_SPAN + 1):
                    if i >= 1 and j >= k:
                        v = score[i - 1][j - k] + _SPAN_PER_TOKEN * k
                        if (
                            v > best
                            and pa[i - 1] == pb[j - k]
                            and a[i - 1] == b"".join(b[j - k : j])
                        ):
                            best, arg = v, (1, k, True)
                    if j >= 1 and i >= k:
                        v = score[i - k][j - 1] + _SPAN_PER_TOKEN * k
                        if (
                            v > best
                            and pb[j - 1] == pa[i - k]
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


def _steps_to_alignment(steps, a_bytes, b_bytes, a_kind, b_kind) -> SeqAlignment:
    """Turn DP steps into chunk ids; merge runs of non-exact steps into one region chunk."""
    sc = np.full(len(a_kind), -1, dtype=np.int64)
    tc = np.full(len(b_kind), -1, dtype=np.int64)
    one_to_one: list[bool] = []
    valid: list[bool] = []
    i = j = 0
    region_a: list[int] = []
    region_b: list[int] = []

    def close_region() -> None:
        # Zero-width specials inside a mismatch region are gaps. The rest (text, and specials
        # written inside the text) form one chunk when both sides have any: valid only when it
        # holds no special and both sides spell the same (NFC-normalized) text.
        ta = [x for x in region_a if a_kind[x] != _ZW]
        tb = [x for x in region_b if b_kind[x] != _ZW]
        if ta and tb:
            cid = len(one_to_one)
            sc[ta] = cid
            tc[tb] = cid
            same = not any(a_kind[x] for x in ta) and not any(b_kind[x] for x in tb)
            same = same and _nfc(b"".join(a_bytes[x] for x in ta)) == _nfc(
                b"".join(b_bytes[x] for x in tb)
            )
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
            # A special written inside the text never decodes to the other side's text, even
            # when both sides hold the same role there (as the offset aligner marks it).
            valid.append(a_kind[i] != _INTEXT and b_kind[j] != _INTEXT)
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
