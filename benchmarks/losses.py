"""Forward+backward time and peak memory of the distillation losses at paper scale.

Setup: student V_S = 128,256 (Llama-3), teacher V_T = 151,669 (Qwen3 tokenizer), B = 4, T = 256
(1,024 positions); ``kd`` compares two 128,256-vocabulary models. Alignment: random monotone chunks
of 1-2 tokens per side (~700 chunks). GOLD/H-KL common set: 109,566 random 1-to-1 pairs -- the real
Llama-3 x Qwen3 exact common set holds ~109,566 of the 128,256 student tokens, so the uncommon
sub-vectors that ULD sorts are ~18.7k student / ~42.1k teacher entries, as here (the benchmark used
100,000 pairs before, i.e. uncommon sets ~50% larger than real). W: K = 4 random teacher ids per
student row, decaying weights. P-KL: teacher top-k 8192 per micro-batch. ``chunk_size`` 256
everywhere: kd slices 256 positions (activation checkpoint); the cross-tokenizer losses slice
chunks by token count, at most 256 predicting rows per side (gradients computed slice by slice
during the forward, no recomputation; see ``xbench.losses.chunks``).

Method: each loss runs in its own subprocess with ``torch.set_num_threads(1)`` (numpy sorts are
single-threaded too), after one warm-up call (on CUDA at the timed shape: the first call there
loads kernels and allocates workspaces, 4 s for kd on an H200). Time = wall clock of one
forward+backward.
Peak memory = the process's peak RSS (VmHWM) during forward+backward minus its RSS just before,
after the peak counter is reset via /proc/self/clear_refs (so import and input-creation transients
do not count). Large tensors are mmap-backed, so RSS tracks live tensors; the inputs (logits) are
excluded, the student-logits gradient is included (every method pays it).
TRL's hybrid loss (``ULDLoss`` with its own vocabulary mapping over the same 109,566 pairs,
"bayesian" merge, ``_compute_hybrid_uld_loss``) runs on the same logits and chunks, one thread,
over all B sequences as its trainer does (per-sequence loss, averaged, one backward);
``--trl-seqs N`` times only the first N and scales by B / N (its cost is linear in B).
xbench's gold uses the same pairs, beta = 0, adaptive weights and "chain" chunks (= TRL's
"bayesian" merge, parity-tested); hkl and uld use "mean" chunks. ``gold_generic``,
``hkl_generic`` and ``uld_generic`` run the same losses with ``fast=False``: the generic path
(autograd over ``cross_tokenizer_sums``), i.e. these losses as they were before the closed-form
kernel of ``xbench.losses.hybrid_ops``, measured in the same run.

``--real-w`` replaces the random structure by the real one from the cache: the Llama-3 x Qwen3 W
(128,256 rows, K = 4, 109,716 one-hot rows), GOLD's exact pairs (TRL semantics) and H-KL's
relaxed pairs; the logits and chunks stay random.

Usage: ``python benchmarks/losses.py [--methods kd,gold,pkl,hkl,uld,trl,...]
[--positions-per-seq 256] [--real-w]``.
Ends with one ``RESULT ...`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V_S, V_T, B = 128_256, 151_669, 4
N_COMMON, K, TOP_K = 109_566, 4, 8192


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS"))


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def real_structure() -> dict:
    """The real Llama-3 x Qwen3 W (K = 4) and common sets from the cache (``--real-w``): GOLD's
    exact pairs (TRL semantics) and H-KL's relaxed pairs (threshold 0.6)."""
    from xbench.assets import load_tokenizer
    from xbench.tokenpair.projection import (
        exact_common_pairs,
        load_or_build,
        relaxed_common_pairs,
    )

    s_tok, t_tok = load_tokenizer("llama3"), load_tokenizer("qwen3")
    proj = load_or_build(s_tok, t_tok)
    if proj.indices.shape[0] != V_S or int(proj.meta["V_T"]) != V_T:
        raise ValueError(f"cached W is {tuple(proj.indices.shape)} x {proj.meta['V_T']}")
    cs, ct = exact_common_pairs(s_tok, t_tok, semantics="trl")
    hs, ht = relaxed_common_pairs(proj, 0.6)
    return {"w_idx": proj.indices.long(), "w": proj.weights.float(), "cs": cs, "ct": ct,
            "hs": hs, "ht": ht}  # fmt: skip


def make_inputs(T: int, b: int = B, seed: int = 0, real: bool = False) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    chunks = []
    for _ in range(b):
        # Per side 1-2 tokens per chunk; chunk 0 holds position 0 and is masked out.
        ns = torch.randint(1, 3, (T,), generator=g)
        nt = torch.randint(1, 3, (T,), generator=g)
        c = int(min((ns.cumsum(0) <= T).sum(), (nt.cumsum(0) <= T).sum()))
        sc = torch.full((T,), -1, dtype=torch.long)
        tc = torch.full((T,), -1, dtype=torch.long)
        sc[: int(ns[:c].sum())] = torch.repeat_interleave(torch.arange(c), ns[:c])
        tc[: int(nt[:c].sum())] = torch.repeat_interleave(torch.arange(c), nt[:c])
        chunks.append((sc, tc, c))
    C = max(c for _, _, c in chunks)
    mask = torch.zeros(b, C, dtype=torch.bool)
    for i, (_, _, c) in enumerate(chunks):
        mask[i, 1:c] = True
    perm_s = torch.randperm(V_S, generator=g)[:N_COMMON]
    perm_t = torch.randperm(V_T, generator=g)[:N_COMMON]
    w = torch.tensor([0.9, 0.09, 0.009, 0.0009]).repeat(V_S, 1)
    structure = real_structure() if real else {}
    return {
        "sc": torch.stack([s for s, _, _ in chunks]), "tc": torch.stack([t for _, t, _ in chunks]),
        "mask": mask, "sid": torch.randint(0, V_S, (b, T), generator=g),
        "tid": torch.randint(0, V_T, (b, T), generator=g),
        "cs": perm_s, "ct": perm_t,
        "w_idx": torch.randint(0, V_T, (V_S, K), generator=g), "w": w / w.sum(1, keepdim=True),
        "hs": perm_s, "ht": perm_t, **structure,
    }  # fmt: skip


def run_method(
    method: str, T: int, b: int = B, trl_seqs: int = B, device: str = "cpu", real: bool = False
) -> float:
    """One forward+backward of ``method``; returns seconds (logits created before timing).

    On CUDA the logits are bf16 (as under autocast), time is synchronized wall clock and the
    peak is ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
    """
    import torch

    import xbench.losses as L
    from xbench.losses import ChunkOptions, ChunkView

    method, generic = method.removesuffix("_generic"), method.endswith("_generic")
    opts = ChunkOptions(chunk_size=256, fast=not generic)
    d = make_inputs(T, b, real=real)
    g = torch.Generator().manual_seed(1)
    vt = V_S if method == "kd" else V_T
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    zs = torch.randn(b, T, V_S, generator=g).to(device, dtype).requires_grad_()
    zt = (torch.randn(b, T, vt, generator=g) * 2).to(device, dtype)
    d = {k: v.to(device) for k, v in d.items()}
    common = (zs, zt, ChunkView(d["sc"], d["tc"], d["mask"]))
    global _RSS0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        _RSS0 = torch.cuda.memory_allocated() // 1024
    else:
        _reset_peak()
        _RSS0 = _rss_kib()
    t0 = time.perf_counter()
    if method == "kd":
        out = L.get("kd")(zs, zt, d["sid"], chunk_size=256)
    elif method == "gold":  # TRL's "bayesian" merge is xbench's "chain" (parity-tested)
        view = ChunkView(d["sc"], d["tc"], d["mask"], d["sid"], d["tid"])
        chain = replace(opts, chunk_method="chain")
        out = L.get("gold")(zs, zt, view, (d["cs"], d["ct"]), options=chain)
    elif method == "hkl":
        out = L.get("hkl")(*common, (d["hs"], d["ht"]), options=opts)
    elif method == "uld":
        out = L.get("uld")(*common, options=opts)
    elif method == "pkl":
        out = L.get("pkl")(*common, (d["w_idx"], d["w"]), options=replace(opts, top_k=TOP_K))
    elif method == "trl":
        return run_trl(zs, zt, d, t0, min(trl_seqs, b))
    else:
        raise ValueError(method)
    out.total.backward()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


_RSS0 = 0


class _FakeTok:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


def run_trl(zs, zt, d, t0: float, n_seqs: int) -> float:
    """TRL's per-sequence path on the first ``n_seqs`` sequences (caller scales by B / n_seqs)."""
    import torch
    import torch.nn.functional as F
    from trl.experimental.gold.gold_trainer import ULDLoss

    # Vocabularies whose raw strings match exactly on the benchmark's common pairs.
    sv = {f"s{i}": i for i in range(V_S)}
    tv = {f"t{i}": i for i in range(V_T)}
    for j, (s, t) in enumerate(zip(d["cs"].tolist(), d["ct"].tolist(), strict=True)):
        del sv[f"s{s}"], tv[f"t{t}"]
        sv[f"c{j}"], tv[f"c{j}"] = s, t
    u = ULDLoss.__new__(ULDLoss)
    torch.nn.Module.__init__(u)
    u.device, u.beta, u.token_merge_strategy = None, 0.0, "bayesian"
    u.hybrid_matched_weight = u.hybrid_unmatched_weight = None
    u.student_tokenizer, u.teacher_tokenizer = _FakeTok(sv), _FakeTok(tv)
    u._initialize_vocabulary_mapping()  # one-off setup, not timed
    T = zs.shape[1]
    groups = []
    for b in range(n_seqs):
        sc, tc, mask = d["sc"][b], d["tc"][b], d["mask"][b]
        valid = torch.nonzero(mask).flatten().tolist()
        groups.append((
            [(torch.nonzero(sc == c).flatten() - 1).tolist() for c in valid],
            [(torch.nonzero(tc == c).flatten() - 1).tolist() for c in valid],
        ))  # fmt: skip
    _reset_peak()
    global _RSS0
    _RSS0 = _rss_kib()
    t0 = time.perf_counter()
    loss = zs.new_zeros(())
    for b, (s_groups, t_groups) in enumerate(groups):
        ps = F.softmax(zs[b, : T - 1], -1)
        pt = F.softmax(zt[b, : T - 1], -1)
        sa = u._merge_probabilities_with_alignment_groups(ps, s_groups, d["sid"][b, 1:].tolist())
        ta = u._merge_probabilities_with_alignment_groups(pt, t_groups, d["tid"][b, 1:].tolist())
        loss = loss + u._compute_hybrid_uld_loss(sa, ta) / n_seqs
    loss.backward()
    return time.perf_counter() - t0


def child(method: str, T: int, trl_seqs: int, device: str = "cpu", real: bool = False) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    # Warm-up (imports, allocator, kernels); on CUDA at the timed shape, whose kernels load lazily.
    cuda = device.startswith("cuda")
    warm_t, warm_b, warm_trl = (T, B, trl_seqs) if cuda else (16, 1, 1)
    run_method(method, warm_t, warm_b, warm_trl, device=device, real=real)
    secs = run_method(method, T, trl_seqs=trl_seqs, device=device, real=real)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() // 1024 - _RSS0
    else:
        peak = _hwm_kib() - _RSS0
    print(json.dumps({"method": method, "seconds": secs, "peak_mib": peak / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--methods",
        default="kd,gold,gold_generic,pkl,hkl,hkl_generic,uld,uld_generic,trl",
        help="comma-separated; NAME_generic = gold/hkl/uld with fast=False (the generic path)",
    )
    ap.add_argument("--positions-per-seq", type=int, default=256)
    ap.add_argument("--trl-seqs", type=int, default=B, help="TRL: time N of the B sequences")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 logits; no TRL)")
    ap.add_argument(
        "--real-w",
        action="store_true",
        help="the real Llama-3 x Qwen3 W and common sets from the cache instead of random ones",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.positions_per_seq, a.trl_seqs, a.device, a.real_w)
        return
    res = {}
    for m in a.methods.split(","):
        cmd = [sys.executable, __file__, "--child", m, "--positions-per-seq",
               str(a.positions_per_seq), "--trl-seqs", str(a.trl_seqs),
               "--device", a.device, *(["--real-w"] if a.real_w else [])]  # fmt: skip
        # The child imports xbench: put this checkout on its path (it runs as a plain script).
        path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": path}
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if m == "trl" and a.trl_seqs < B:  # timed on N of B sequences; linear in B
            r["seconds"] *= B / a.trl_seqs
            r["note"] = f"{a.trl_seqs} of {B} sequences, x{B / a.trl_seqs:g}"
        elif m == "trl":
            r["note"] = f"all {B} sequences"
        res[m] = r
        print(f"{m:12s} fwd+bwd {r['seconds']:8.3f} s   peak {r['peak_mib']:8.1f} MiB"
              f"  {r.get('note', '')}", flush=True)  # fmt: skip
    print(
        f"device={a.device}, threads=1, B={B}, T={a.positions_per_seq}, V_S={V_S}, "
        f"V_T={V_T}, top_k={TOP_K}, W and common sets: "
        f"{'real Llama-3 x Qwen3' if a.real_w else 'random'}"
    )

    def ratio(x: str, y: str, key: str) -> str:
        return f"{res[x][key] / res[y][key]:.2f}" if x in res and y in res else "nan"

    print(
        f"RESULT pkl_time_ratio={ratio('pkl', 'kd', 'seconds')} "
        f"pkl_mem_ratio={ratio('pkl', 'kd', 'peak_mib')} "
        f"gold_time_ratio={ratio('gold', 'kd', 'seconds')} "
        f"hkl_time_ratio={ratio('hkl', 'kd', 'seconds')} "
        f"uld_time_ratio={ratio('uld', 'kd', 'seconds')} "
        f"gold_vs_trl_speedup={ratio('trl', 'gold', 'seconds')} "
        + " ".join(
            f"{m}_vs_generic_time={ratio(m, m + '_generic', 'seconds')} "
            f"{m}_vs_generic_mem={ratio(m, m + '_generic', 'peak_mib')}"
            for m in ("gold", "hkl", "uld")
        )
    )


if __name__ == "__main__":
    main()
