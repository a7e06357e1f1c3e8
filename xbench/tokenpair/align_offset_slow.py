"""Slow path of the offset aligner: one sequence pair in plain Python.

The definition the vectorized path in :mod:`xbench.tokenpair.align_offset` implements, plus the
rare cases it hands over: forbidden cut positions and zero-width tokens on both sides.
"""

from __future__ import annotations

import numpy as np

from xbench.tokenpair.types import SeqAlignment

__all__ = ["align_one"]


def align_one(s_off, s_code, s_w, t_off, t_code, t_w, bad=()) -> SeqAlignment:
    """Offset-align one sequence pair in plain Python: the definition the vectorized path
    implements, plus the rare cases it hands over.

    Args:
        s_off: ``(Ts, 2)`` student character offsets.
        s_code: ``(Ts,)`` shared role code of each student token, -1 for text tokens.
        s_w: ``(Ts,)`` bool, the student token has width (covers text).
        t_off: ``(Tt, 2)`` same for the teacher.
        t_code: ``(Tt,)`` same for the teacher.
        t_w: ``(Tt,)`` same for the teacher.
        bad: Character positions no cut may fall on (inside a cluster NFC reorders).

    Returns:
        The :class:`SeqAlignment`; zero-width tokens of the same role at the same chunk boundary
        on both sides are paired 1:1, other zero-width tokens are gaps.
    """
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
