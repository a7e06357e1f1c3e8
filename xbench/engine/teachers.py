"""A cell's teachers: loaded, checked, placed, with their pair data (W, common pairs), and their
forward passes: online (eval mode, no grad) or from an on-disk top-k logit cache.

The cache stores, per teacher and per micro-batch content, the teacher's top-k logits
(values, indices) in one file. Every cell of a sweep that shares the teacher and the data reads
the same files, so a sweep over M methods pays for one teacher pass, not M. Keys hash the
teacher's identity (model source + tokenizer fingerprint), k, and the exact input ids.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from transformers import PreTrainedModel

from xbench.engine import distributed
from xbench.engine.models import head_size, load_model, load_tokenizer
from xbench.io import atomic_path
from xbench.losses.options import check_kd_options, effective_kd
from xbench.losses.presets import exact_pairs_from_w
from xbench.tokenpair import projection as proj_mod
from xbench.vocab import RELAXED_PAIRS, USES_W

# Logits outside the cached top-k: far below any kept logit, yet finite so that
# p * log p stays 0 (not NaN) in every divergence.
_FLOOR = -1.0e4


class TeacherRunner:
    """Runs one teacher; counts real forward passes (``forwards``) for tests and logs."""

    def __init__(
        self,
        model: PreTrainedModel,
        identity: str,
        *,
        top_k: int,
        cache_dir: str | None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.top_k = top_k
        self.cache_dir = (
            Path(cache_dir) / hashlib.sha256(identity.encode()).hexdigest()[:16]
            if cache_dir
            else None
        )
        self.forwards = 0

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V_T)

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, V_T) teacher logits; from the cache (top-k, rest at a floor) when enabled."""
        if self.cache_dir is None:
            return self._forward(ids, mask)
        key = hashlib.sha256(
            ids.cpu().numpy().tobytes() + mask.cpu().numpy().tobytes() + str(self.top_k).encode()
        ).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.pt"
        if path.exists():
            vals, idx, vocab = torch.load(path, map_location=ids.device, weights_only=True)
        else:
            full = self._forward(ids, mask)
            vocab = full.shape[-1]
            k = min(self.top_k, vocab)
            vals, idx = full.topk(k, dim=-1)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save((vals.cpu(), idx.cpu().int(), vocab), tmp)
            with open(self.cache_dir / "forwards.log", "a") as fh:  # the forward-pass count
                fh.write(f"{os.getpid()} {key}\n")
        out = torch.full((*vals.shape[:-1], int(vocab)), _FLOOR, device=ids.device)
        return out.scatter_(-1, idx.long().to(ids.device), vals.to(ids.device))


@dataclass
class Teacher:
    """One teacher of a cell, with everything its loss needs precomputed."""

    name: str
    method: str
    weight: float
    kd: dict[str, Any]
    tok: Any
    runner: TeacherRunner
    same_tokenizer: bool
    projection: proj_mod.Projection | None = None
    pairs: tuple[Tensor, Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_teachers(cfg: DictConfig, s_tok: Any, student: nn.Module, device: str) -> list[Teacher]:
    """Load every teacher of the cell, check its vocabulary, and build W / common pairs."""
    check_kd_options(cfg)  # every kd:/mix: knob is read or refused, before any model loads
    out: list[Teacher] = []
    s_fp = proj_mod.tokenizer_fingerprint(s_tok)
    for i, spec in enumerate(cfg.get("teachers") or []):
        field_name = f"teachers[{i}]"
        kd = effective_kd(cfg, i)
        tok = load_tokenizer(spec.tokenizer)
        # Teachers built from a config get their own seed (not the student's init).
        model = load_model(
            spec, tok, field=field_name, seed=int(cfg.seed) + 1000 + i, device=device
        ).to(device)
        same = proj_mod.tokenizer_fingerprint(tok) == s_fp
        method = str(spec.method)
        if method == "kd" and not same:
            raise ValueError(
                f"{field_name}.method=kd needs the student tokenizer; {spec.name} has its own: "
                "use uld, gold, pkl, hkl or xtoken."
            )
        cache = cfg.train.teacher_cache_dir if cfg.train.get("teacher_cache") else None
        t_par = str(cfg.train.teacher_parallel)
        if t_par not in ("replicate", "fsdp"):
            raise ValueError(f"train.teacher_parallel must be replicate or fsdp; got {t_par!r}.")
        if t_par == "fsdp" and distributed.world_size() > 1:
            # A sharded teacher's forward is a collective: every rank must run it for every
            # micro-batch, which a per-rank cache hit would break.
            if cache:
                raise ValueError(
                    "train.teacher_parallel=fsdp cannot be combined with train.teacher_cache=true; "
                    "replicate the teachers or turn the cache off."
                )
            distributed.fully_shard_model(model)
        ident = f"{spec.model}|{proj_mod.tokenizer_fingerprint(tok)}"
        runner = TeacherRunner(model, ident, top_k=int(kd["teacher_cache_topk"]), cache_dir=cache)
        t = Teacher(spec.name, method, float(spec.weight), kd, tok, runner, same)
        authors_gold = method == "gold" and kd["semantics"] == "authors"
        if method in USES_W or authors_gold:
            t.projection = proj_mod.load_or_build(
                s_tok,
                tok,
                proj_mod.ProjectionConfig(
                    rank=int(kd["rank"]), reverse_pass=bool(kd["reverse_pass"])
                ),
                student_head_size=head_size(student),
                teacher_head_size=head_size(model),
            )
        if authors_gold:  # the authors read GOLD's exact map from W's one-hot rows
            assert t.projection is not None
            t.pairs = exact_pairs_from_w(t.projection.indices, t.projection.weights)
        elif method == "gold":
            t.pairs = proj_mod.exact_common_pairs(s_tok, tok, semantics=str(kd["gold_semantics"]))
        elif method in RELAXED_PAIRS:
            assert t.projection is not None
            t.pairs = proj_mod.relaxed_common_pairs(t.projection, float(kd["hkl_threshold"]))
        out.append(t)
    return out
