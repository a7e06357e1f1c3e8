"""Tiny random batches and naive (loop / dense) references for the loss tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_alignment(
    B: int, Ts: int, Tt: int, seed: int = 0, max_span: int = 3, drop: float = 0.15
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random monotone chunking of B sequence pairs.

    Returns (student_chunk (B, Ts), teacher_chunk (B, Tt), chunk_mask (B, C), one_to_one (B, C)):
    chunk 0 holds position 0 on both sides (masked out), some chunks are dropped at random, and
    positions past the last chunk are padding (-1).
    """
    g = torch.Generator().manual_seed(seed)
    sc = torch.full((B, Ts), -1, dtype=torch.long)
    tc = torch.full((B, Tt), -1, dtype=torch.long)
    spans: list[list[tuple[int, int]]] = []
    for b in range(B):
        i = j = 0
        cur: list[tuple[int, int]] = []
        c = 0
        while True:
            ns = int(torch.randint(1, max_span + 1, (1,), generator=g))
            nt = int(torch.randint(1, max_span + 1, (1,), generator=g))
            if i + ns > Ts or j + nt > Tt:
                break
            sc[b, i : i + ns] = c
            tc[b, j : j + nt] = c
            cur.append((ns, nt))
            i, j, c = i + ns, j + nt, c + 1
        spans.append(cur)
    C = max(len(s) for s in spans)
    mask = torch.zeros(B, C, dtype=torch.bool)
    one = torch.zeros(B, C, dtype=torch.bool)
    for b, cur in enumerate(spans):
        for c, (ns, nt) in enumerate(cur):
            mask[b, c] = c > 0 and float(torch.rand(1, generator=g)) > drop
            one[b, c] = ns == 1 and nt == 1
    return sc, tc, mask, one


def random_projection(V_S: int, V_T: int, K: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(V_S, K) indices and weights, rows summing to 1, some padded (weight 0, index 0) slots."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(V_T, generator=g)[:K] for _ in range(V_S)])
    w = torch.rand(V_S, K, generator=g) + 0.05
    pad = torch.rand(V_S, K, generator=g) < 0.3
    pad[:, 0] = False
    w = torch.where(pad, 0.0, w)
    idx = torch.where(pad, 0, idx)
    return idx, w / w.sum(1, keepdim=True)


def dense_w(idx: Tensor, w: Tensor, V_T: int) -> Tensor:
    """Dense (V_S, V_T) W; tiny vocabularies only."""
    out = torch.zeros(idx.shape[0], V_T, dtype=w.dtype)
    for s in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            out[s, idx[s, k]] += w[s, k]
    return out


def naive_chunks(
    logits: Tensor, token_chunk: Tensor, chunk_mask: Tensor, ids: Tensor | None, method: str,
    T: float = 1.0,
) -> Tensor:  # fmt: skip
    """Per-chunk distributions (probabilities, (N, V)) by explicit loops, rows in (b, c) order."""
    rows = []
    for b in range(chunk_mask.shape[0]):
        for c in range(chunk_mask.shape[1]):
            if not chunk_mask[b, c]:
                continue
            pos = [int(p) for p in torch.nonzero(token_chunk[b] == c).flatten()]
            probs = [F.softmax(logits[b, p - 1].double() / T, -1) for p in pos]
            if method == "mean":
                q = sum(probs) / len(probs)
                rows.append(q / q.sum())
            else:
                pref = 1.0
                for p, pr in zip(pos[:-1], probs[:-1], strict=True):
                    pref = pref * pr[ids[b, p]]
                rows.append(probs[-1] * pref)
    return torch.stack(rows) if rows else torch.zeros(0, logits.shape[-1], dtype=torch.float64)


def naive_sorted_l1(a: Tensor, b: Tensor) -> Tensor:
    sa = a.sort(-1, descending=True).values
    sb = b.sort(-1, descending=True).values
    m = max(sa.shape[-1], sb.shape[-1])
    sa = F.pad(sa, (0, m - sa.shape[-1]))
    sb = F.pad(sb, (0, m - sb.shape[-1]))
    return (sa - sb).abs().sum(-1)
