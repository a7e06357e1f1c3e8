"""P-KL's dense projection path (small vocabularies) equals the sparse index_add path."""

from __future__ import annotations

import pytest
import torch

from xbench.losses import pkl


@pytest.mark.parametrize("columns", [None, "some"])
def test_dense_and_sparse_projection_agree(monkeypatch: pytest.MonkeyPatch, columns) -> None:
    g = torch.Generator().manual_seed(0)
    v_s, v_t, k, n = 50, 37, 4, 9
    idx = torch.randint(0, v_t, (v_s, k), generator=g)
    idx[3, 1] = idx[3, 0]  # a duplicate teacher id in one row: both paths must sum it
    w = torch.rand(v_s, k, generator=g, dtype=torch.float64)  # W may be float64 (xtoken did)
    w = (w / w.sum(1, keepdim=True)).requires_grad_()
    p_s = torch.softmax(torch.randn(n, v_s, generator=g), -1).requires_grad_()
    cols = None if columns is None else torch.tensor([0, 5, 7, 36])
    dense = pkl.project(p_s, idx, w, cols, v_t)
    gd = torch.autograd.grad(dense.square().sum(), (p_s, w))
    monkeypatch.setattr(pkl, "DENSE_LIMIT", 0)
    sparse = pkl.project(p_s, idx, w, cols, v_t)
    gs = torch.autograd.grad(sparse.square().sum(), (p_s, w))
    torch.testing.assert_close(dense, sparse)
    for a, b in zip(gd, gs, strict=True):
        torch.testing.assert_close(a, b, check_dtype=False)
