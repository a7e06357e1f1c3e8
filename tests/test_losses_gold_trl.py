"""GOLD parity with TRL 1.16's hybrid ULD loss, and Proposition 1 (GOLD suppresses, P-KL not)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

import xbench.losses as L
from xbench.losses import ChunkOptions as Opts
from xbench.losses import ChunkView

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
gold_trainer = pytest.importorskip("trl.experimental.gold.gold_trainer")


class FakeTok:
    """Just enough of a tokenizer for TRL's vocabulary mapping: ``get_vocab``."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


S_VOCAB = ["a", "Ġthe", "b", "1", "2", "12", "c", "Ġx", "23", "d", "e"]
T_VOCAB = ["2", "z", "Ġthe", "1", "q", "a", "▁x", "d", "3", "y", "b", "w", "c", "k"]


def trl_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """TRL semantics: raw ``get_vocab()`` string equality (so 'Ġx' != '▁x')."""
    tv = FakeTok(T_VOCAB).get_vocab()
    pairs = sorted((i, tv[s]) for i, s in enumerate(S_VOCAB) if s in tv)
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def trl_uld(beta: float, weights, strategy: str = "bayesian"):
    u = gold_trainer.ULDLoss.__new__(gold_trainer.ULDLoss)
    torch.nn.Module.__init__(u)
    u.device = None
    u.student_tokenizer, u.teacher_tokenizer = FakeTok(S_VOCAB), FakeTok(T_VOCAB)
    u.beta = beta
    u.hybrid_matched_weight, u.hybrid_unmatched_weight = weights
    u.token_merge_strategy = strategy
    u._initialize_vocabulary_mapping()
    return u


def groups_to_chunks(groups: list[list[int]], T: int) -> torch.Tensor:
    """TRL groups index answer tokens 1..T-1 (row k = token at position k + 1)."""
    chunk = torch.full((1, T), -1, dtype=torch.long)
    for g, rows in enumerate(groups):
        for k in rows:
            chunk[0, k + 1] = g
    return chunk


@pytest.mark.parametrize(
    "beta,weights", [(0.0, (None, None)), (0.5, (None, None)), (1.0, (0.6, 0.4)), (0.3, (1.0, 0.5))]
)
def test_gold_trl_variant_equals_trl_hybrid(beta: float, weights) -> None:
    g = torch.Generator().manual_seed(11)
    Ts, Tt = 9, 10
    zs = torch.randn(1, Ts, len(S_VOCAB), generator=g) * 1.5
    zt = torch.randn(1, Tt, len(T_VOCAB), generator=g) * 1.5
    sid = torch.randint(0, len(S_VOCAB), (1, Ts), generator=g)
    tid = torch.randint(0, len(T_VOCAB), (1, Tt), generator=g)
    s_groups = [[0], [1, 2], [3], [4], [5, 6, 7]]
    t_groups = [[0, 1], [2], [3, 4], [5], [6, 7, 8]]
    u = trl_uld(beta, weights)
    # TRL: full softmax per answer row, "bayesian" chain-rule merge, hybrid loss averaged per chunk.
    ps = F.softmax(zs[0, : Ts - 1], -1)
    pt = F.softmax(zt[0, : Tt - 1], -1)
    sa = u._merge_probabilities_with_alignment_groups(ps, s_groups, sid[0, 1:].tolist())
    ta = u._merge_probabilities_with_alignment_groups(pt, t_groups, tid[0, 1:].tolist())
    ref = u._compute_hybrid_uld_loss(sa, ta)

    cs, ct = trl_pairs()
    w = "adaptive" if weights[0] is None else weights
    view = ChunkView(groups_to_chunks(s_groups, Ts), groups_to_chunks(t_groups, Tt),
                     torch.ones(1, len(s_groups), dtype=torch.bool), sid, tid)  # fmt: skip
    opts = Opts(beta=beta, weights=w, chunk_method="chain", chunk_size=2)
    out = L.get("gold")(zs, zt, view, (cs, ct), options=opts)
    assert (out.total / out.count).item() == pytest.approx(ref.item(), abs=1e-5)
    # kd.semantics=trl is exactly this call (the preset picks the "bayesian" = chain merge).
    from xbench.losses.presets import loss_kwargs

    preset = Opts(beta=beta, weights=w, **loss_kwargs("trl", "gold"))
    out_p = L.get("gold")(zs, zt, view, (cs, ct), options=preset)
    assert (out_p.total / out_p.count).item() == pytest.approx(ref.item(), abs=1e-5)
    # ... and its gradient w.r.t. the student logits, through TRL's own merge and hybrid loss.
    z = zs.clone().requires_grad_()
    ps_g = F.softmax(z[0, : Ts - 1], -1)
    sa_g = u._merge_probabilities_with_alignment_groups(ps_g, s_groups, sid[0, 1:].tolist())
    (g_ref,) = torch.autograd.grad(u._compute_hybrid_uld_loss(sa_g, ta), z)
    z2 = zs.clone().requires_grad_()
    mine = L.get("gold")(z2, zt, view, (cs, ct), options=preset)
    (g_mine,) = torch.autograd.grad(mine.total / mine.count, z2)
    assert torch.allclose(g_mine, g_ref, atol=1e-6), (g_mine - g_ref).abs().max()
    # One-token chunks: both chunk methods reduce to the next-token distribution.
    one = [[k] for k in range(Ts - 1)]
    sa1 = F.softmax(zs[0, : Ts - 1], -1)
    ta1 = F.softmax(zt[0, : Ts - 1], -1)
    ref1 = u._compute_hybrid_uld_loss(sa1, ta1)
    view1 = ChunkView(groups_to_chunks(one, Ts), groups_to_chunks(one, Ts),
                      torch.ones(1, Ts - 1, dtype=torch.bool))  # fmt: skip
    out1 = L.get("gold")(zs, zt[:, :Ts], view1, (cs, ct), options=Opts(beta=beta, weights=w))
    assert (out1.total / out1.count).item() == pytest.approx(ref1.item(), abs=1e-5)


def test_trl_pairs_match_projection_helper() -> None:
    proj = pytest.importorskip("xbench.tokenpair.projection")
    try:
        cs, ct = proj.exact_common_pairs(FakeTok(S_VOCAB), FakeTok(T_VOCAB), semantics="trl")
    except Exception as exc:  # the helper may need real tokenizers; the pairs are ours anyway
        pytest.skip(f"exact_common_pairs needs a real tokenizer: {exc}")
    ref_s, ref_t = trl_pairs()
    assert torch.equal(cs, ref_s) and torch.equal(ct, ref_t)


# ---------------------------------------------------------------- Proposition 1

DIGITS = [str(i) for i in range(10)]
WORDS = ["the", "cat", "is", " ", "+"]
STUDENT = DIGITS + WORDS + [str(i) for i in range(10, 40)]  # multi-digit numerals: no partner
TEACHER = DIGITS + WORDS + ["=", "dog"]  # a digit-splitting teacher


def digit_projection() -> tuple[torch.Tensor, torch.Tensor]:
    """W rows by the paper's rule: exact match -> 1; '23' -> ('2', '3') with 0.9, 0.09 renormed."""
    tv = {t: i for i, t in enumerate(TEACHER)}
    idx = torch.zeros(len(STUDENT), 2, dtype=torch.long)
    w = torch.zeros(len(STUDENT), 2)
    for s, tok in enumerate(STUDENT):
        if tok in tv:
            idx[s, 0], w[s, 0] = tv[tok], 1.0
        else:
            idx[s] = torch.tensor([tv[tok[0]], tv[tok[1]]])
            w[s] = torch.tensor([0.9, 0.09]) / 0.99
    return idx, w


def prop1_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    T = 8
    zs = (torch.randn(2, T, len(STUDENT), generator=g) * 2).requires_grad_()
    zt = torch.randn(2, T, len(TEACHER), generator=g) * 2
    zt[..., 2] += 4.0  # the teacher likes digit '2' ...
    chunk = torch.tensor([[-1, 0, 1, 2, 3, 4, 5, 6], [-1, 0, 0, 1, 2, 2, 3, 4]])
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    return zs, zt, chunk, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proposition1_gold_suppresses_uncommon_pkl_does_not(seed: int) -> None:
    tv = {t: i for i, t in enumerate(TEACHER)}
    pairs = [(s, tv[t]) for s, t in enumerate(STUDENT) if t in tv]
    cs = torch.tensor([p[0] for p in pairs])
    ct = torch.tensor([p[1] for p in pairs])
    uncommon = torch.tensor([s for s, t in enumerate(STUDENT) if t not in tv])
    zs, zt, chunk, mask = prop1_batch(seed)
    # The common-set term alone (weights (1, 0)), forward KL as in the paper's proposition.
    view = ChunkView(chunk, chunk, mask)
    out = L.get("gold")(zs, zt, view, (cs, ct), options=Opts(beta=0.0, weights=(1.0, 0.0)))
    (grad,) = torch.autograd.grad(out.total, zs)
    g_unc = grad[..., uncommon]  # (B, T, |U|)
    assert (g_unc >= -1e-7).all(), "common-set KL must push every uncommon logit down"
    assert (g_unc > 1e-6).any()
    # Closed form on a one-token chunk: d/dz_u = p_S[u] * M_C, M_C = teacher mass on the pairs.
    ps, pt = F.softmax(zs[0, 0].detach(), -1), F.softmax(zt[0, 0], -1)
    assert torch.allclose(g_unc[0, 0], ps[uncommon] * pt[ct].sum(), atol=1e-6)

    idx, w = digit_projection()
    out = L.get("pkl")(zs, zt, view, (idx, w), options=Opts(top_k=len(TEACHER)))
    (grad,) = torch.autograd.grad(out.total, zs)
    assert (grad[..., uncommon] < -1e-6).any(), "P-KL should raise some multi-digit numerals"


# ---------------------------------------------------------------- ULD under kd.semantics=trl


def byte_offsets(s_groups: list[int], t_groups: list[int]) -> tuple[list, list]:
    """Byte offsets that make TRL's ``_align_by_byte_offsets`` return the given groups.

    Group g spans bytes [12 g, 12 g + 12); its student tokens split it at 12 g + 1, + 2, ...
    and its teacher tokens at 12 g + 11, + 10, ..., so inner boundaries never coincide.
    """

    def side(sizes: list[int], inner) -> list[tuple[int, int]]:
        out = []
        for g, n in enumerate(sizes):
            cuts = [12 * g, *sorted(inner(12 * g, k) for k in range(1, n)), 12 * g + 12]
            out += list(itertools.pairwise(cuts))
        return out

    return side(s_groups, lambda b, k: b + k), side(t_groups, lambda b, k: b + 12 - k)


@pytest.mark.parametrize(
    "sizes_s,sizes_t,T,V",
    [
        ([1, 2, 1, 1, 3], [2, 1, 2, 1, 3], 1.0, (len(S_VOCAB), len(T_VOCAB))),
        ([3, 1, 1, 2], [1, 1, 3, 1], 2.0, (len(S_VOCAB), len(T_VOCAB))),
        ([1, 2, 1, 1], [2, 1, 1, 2], 1.0, (128_256, 151_669)),  # the real vocabulary sizes
    ],
)
def test_uld_trl_preset_equals_trl_uld_loss(sizes_s, sizes_t, T: float, V) -> None:
    """xbench's ``uld`` under ``kd.semantics=trl`` equals TRL's ``ULDLoss`` (extended ULD,
    "bayesian" merge, no hybrid), value and gradient, called end to end through TRL's
    ``_compute_distillation_loss``: answer slicing, EOS skip, byte-offset groups, merge, sort, pad.
    (With ``chunk_method=mean`` instead of the preset's chain the first case is 0.635 vs 0.832.)"""
    from xbench.losses.presets import loss_kwargs

    g = torch.Generator().manual_seed(len(sizes_s) + int(T) + V[0])
    prompt = 2
    ns, nt = sum(sizes_s), sum(sizes_t)
    Ts, Tt = prompt + ns + 1, prompt + nt + 1  # + one EOS that TRL skips
    zs = (torch.randn(1, Ts, V[0], generator=g) * 2).requires_grad_()
    zt = torch.randn(1, Tt, V[1], generator=g) * 2
    sid = torch.randint(0, V[0], (1, Ts), generator=g)
    tid = torch.randint(0, V[1], (1, Tt), generator=g)
    s_lab, t_lab = sid.clone(), tid.clone()
    s_lab[0, :prompt], t_lab[0, :prompt] = -100, -100
    s_off, t_off = byte_offsets(sizes_s, sizes_t)
    pad = [(0, 0)] * prompt
    so = torch.tensor([pad + s_off + [(s_off[-1][1],) * 2]])
    to = torch.tensor([pad + t_off + [(t_off[-1][1],) * 2]])

    u = gold_trainer.ULDLoss.__new__(gold_trainer.ULDLoss)
    torch.nn.Module.__init__(u)
    u.ignore_index, u.skip_student_eos, u.skip_teacher_eos = -100, True, True
    u.use_extended_uld, u.use_hybrid_loss, u._vocab_mapping = True, False, None
    u.student_temperature = u.teacher_temperature = T
    u.distillation_weight, u.token_merge_strategy = 1.0, "bayesian"
    ref = u._compute_distillation_loss(zs, zt, s_lab, t_lab, sid, tid, so, to)
    (g_ref,) = torch.autograd.grad(ref, zs)

    def chunks(sizes: list[int], n_tok: int) -> torch.Tensor:
        c = torch.full((1, n_tok), -1, dtype=torch.long)
        c[0, prompt : prompt + sum(sizes)] = torch.repeat_interleave(
            torch.arange(len(sizes)), torch.tensor(sizes)
        )
        return c

    view = ChunkView(chunks(sizes_s, Ts), chunks(sizes_t, Tt),
                     torch.ones(1, len(sizes_s), dtype=torch.bool), sid, tid)  # fmt: skip
    opts = Opts(temperature=T, chunk_size=3, **loss_kwargs("trl", "uld"))
    out = L.get("uld")(zs, zt, view, options=opts)
    mine = out.total / out.count
    (g_mine,) = torch.autograd.grad(mine, zs)
    assert mine.item() == pytest.approx(ref.item(), abs=1e-5)
    assert torch.allclose(g_mine, g_ref, atol=1e-6), (g_mine - g_ref).abs().max()
    assert g_ref.abs().sum() > 0  # the comparison has something to compare
