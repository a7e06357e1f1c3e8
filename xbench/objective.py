"""The one place that mixes CE and the teachers' KD losses; the loop never knows which loss runs.

Per micro-batch::

    L = CE_sum / N_ce  +  KD,   KD = sum_i w_i * KD_i_sum / N_i          (mix.mode = fixed: weights)
    L = sg(CE / KD) * KD + CE                                            (mix.mode = dynamic, paper)

with N_ce and N_i the *global* unit counts of the whole optimizer step (all micro-batches, all
ranks), so the sum of the micro-batch losses is the step's global mean and does not depend on how
the step is split. Under ``dynamic`` the ratio sg(CE/KD) uses the micro-batch's own means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from xbench import distributed
from xbench.losses import get as get_loss
from xbench.losses.base import LossOutput
from xbench.losses.combine import (
    adaptive_teacher_weights,
    average_teacher_logits,
    best_teacher,
    teacher_scores,
)
from xbench.losses.pkl import LearnableProjection
from xbench.models import head_size, load_model, load_tokenizer
from xbench.teacher import TeacherRunner
from xbench.tokenpair import projection as proj_mod

CROSS = ("uld", "gold", "pkl", "hkl", "xtoken")
# Multi-teacher combination (kd.multi_teacher): static weights (paper default), softmax over
# per-batch teacher scores (-CE, -entropy, max-prob), the best teacher per batch, or the
# weighted average of same-vocabulary teachers' logits.
MULTI = ("static", "softmax_ce", "softmax_entropy", "softmax_maxprob", "best", "logit_avg")
# kd.kl (config vocabulary) -> the kd loss's divergence name.
_DIVERGENCE = {"forward": "forward_kl", "reverse": "reverse_kl", "jsd": "jsd"}
_SCORE = {"softmax_ce": "neg_ce", "softmax_entropy": "neg_entropy", "softmax_maxprob": "max_prob"}


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
    out: list[Teacher] = []
    s_fp = proj_mod.tokenizer_fingerprint(s_tok)
    for i, spec in enumerate(cfg.get("teachers") or []):
        field_name = f"teachers[{i}]"
        kd = {**OmegaConf.to_container(cfg.kd, resolve=True), **(spec.get("kd") or {})}
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
        t_par = str(cfg.train.get("teacher_parallel", "replicate"))
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
        runner = TeacherRunner(model, ident, top_k=int(kd["topk"]), cache_dir=cache)
        t = Teacher(spec.name, method, float(spec.weight), kd, tok, runner, same)
        if method in ("pkl", "hkl", "xtoken"):
            t.projection = proj_mod.load_or_build(
                s_tok,
                tok,
                proj_mod.ProjectionConfig(
                    rank=int(kd["rank"]), reverse_pass=bool(kd["reverse_pass"])
                ),
                student_head_size=head_size(student),
                teacher_head_size=head_size(model),
            )
        if method == "gold":
            t.pairs = proj_mod.exact_common_pairs(s_tok, tok, semantics=str(kd["gold_semantics"]))
        elif method in ("hkl", "xtoken"):
            assert t.projection is not None
            t.pairs = proj_mod.relaxed_common_pairs(t.projection, float(kd["hkl_threshold"]))
        out.append(t)
    return out


class Objective(nn.Module):
    """CE plus the weighted per-teacher KD losses of one cell (holds learnable W values)."""

    def __init__(self, cfg: DictConfig, teachers: list[Teacher]) -> None:
        super().__init__()
        self.teachers = teachers
        self.mix = OmegaConf.to_container(cfg.mix, resolve=True)
        self.multi = str(cfg.kd.multi_teacher)
        if self.multi not in MULTI:
            raise ValueError(f"kd.multi_teacher must be one of {MULTI}; got {self.multi!r}.")
        if self.multi == "logit_avg" and not all(
            t.same_tokenizer and t.method == "kd" for t in teachers
        ):
            raise ValueError(
                "kd.multi_teacher=logit_avg averages logits, so every teacher must share the "
                "student's tokenizer and use method kd; use static or softmax_* weights instead."
            )
        # Each teacher's score on the current micro-batch (adaptive weights only). A scalar, not
        # the logits: keeping every teacher's (B, T, V_T) logits alive until all teachers ran
        # cost one full-vocabulary tensor per teacher at paper scale.
        self._scores: dict[int, Tensor] = {}
        self.w = nn.ModuleDict()
        for i, t in enumerate(teachers):
            if t.projection is not None and t.method in ("pkl", "xtoken") and t.kd["learn_w"]:
                self.w[f"t{i}"] = LearnableProjection(t.projection.indices, t.projection.weights)
        self._device = "cpu"

    def to(self, device: str) -> Objective:  # type: ignore[override]
        self._device = device
        for t in self.teachers:
            if t.pairs is not None:
                t.pairs = (t.pairs[0].to(device), t.pairs[1].to(device))
            if t.projection is not None:
                t.projection.indices = t.projection.indices.to(device)
                t.projection.weights = t.projection.weights.to(device)
        return super().to(device)

    def w_parameters(self) -> list[nn.Parameter]:
        return list(self.w.parameters())

    def global_counts(self, micro: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Loss units of the whole step: summed over micro-batches, all-reduced over ranks."""
        keys = list(micro[0]["counts"])
        local = torch.tensor([[float(b["counts"][k]) for k in keys] for b in micro]).sum(0)
        total = distributed.all_reduce_sum(local.to(self._device)).clamp_min(1.0)
        return dict(zip(keys, total, strict=True))

    def _w(self, i: int, t: Teacher) -> tuple[Tensor, Tensor]:
        assert t.projection is not None
        key = f"t{i}"
        weights = self.w[key].weights() if key in self.w else t.projection.weights
        return t.projection.indices, weights

    def _note(self, i: int, t_logits: Tensor, labels: Tensor) -> None:
        """Score teacher ``i`` now when adaptive weights will need it."""
        if self.multi != "static" and len(self.teachers) > 1:
            self._scores[i] = teacher_scores(
                t_logits, labels, kind=_SCORE.get(self.multi, "neg_ce")
            )

    def teacher_loss(
        self, i: int, t: Teacher, s_logits: Tensor, batch: dict[str, Any]
    ) -> LossOutput:
        """KD_i of one micro-batch as a LossOutput (sums over this teacher's units)."""
        kd = t.kd
        tb = batch["teachers"][i]
        if t.same_tokenizer:
            t_logits = t.runner.logits(batch["input_ids"], batch["attention_mask"])
            self._note(i, t_logits, batch["labels"])
            div = _DIVERGENCE[kd["kl"]]
            return get_loss("kd")(
                s_logits,
                t_logits[..., : s_logits.shape[-1]],
                batch["labels"],
                divergence=div,
                beta=float(kd["beta"]),
                temperature=float(kd["temperature"]),
            )
        t_logits = t.runner.logits(tb["input_ids"], tb["attention_mask"])
        self._note(i, t_logits, tb["input_ids"].masked_fill(tb["attention_mask"] == 0, -100))
        al = tb["align"]
        common = dict(
            temperature=float(kd["temperature"]),
            chunk_method=str(kd["chunk_method"]),
            student_ids=batch["input_ids"],
            teacher_ids=tb["input_ids"],
            chunk_size=int(kd["loss_chunk_size"]),
        )
        args = (s_logits, t_logits, al.student_chunk, al.teacher_chunk, al.chunk_mask)
        beta = float(kd["beta"]) if kd["kl"] == "jsd" else 0.0
        if t.method == "uld":
            return get_loss("uld")(*args, **common)
        if t.method in ("gold", "hkl"):
            assert t.pairs is not None
            return get_loss(t.method)(
                *args, *t.pairs, beta=beta, weights=str(kd["gold_weights"]), **common
            )
        if t.method == "pkl":
            return get_loss("pkl")(*args, *self._w(i, t), top_k=int(kd["topk"]), **common)
        if t.method == "xtoken":
            assert t.pairs is not None
            return get_loss("xtoken")(
                *args,
                *t.pairs,
                *self._w(i, t),
                alpha=float(kd["alpha"]),
                top_k=int(kd["topk"]),
                beta=beta,
                weights=str(kd["gold_weights"]),
                **common,
            )
        raise ValueError(f"unknown method {t.method!r}")

    def forward(
        self, s_logits: Tensor, batch: dict[str, Any], counts: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The micro-batch loss (already divided by global counts) and its logged parts."""
        ce = get_loss("ce")(s_logits, batch["labels"])
        ce_part = ce.total / counts["ce"]
        parts: dict[str, Tensor] = {"train/loss_ce": ce_part.detach()}
        if not self.teachers:
            parts["train/loss"] = ce_part.detach()
            return ce_part, parts
        if self.multi == "logit_avg" and len(self.teachers) > 1:
            return self._logit_average(s_logits, batch, counts, ce_part, parts)
        kd_parts = []
        for i, t in enumerate(self.teachers):
            out = self.teacher_loss(i, t, s_logits, batch)
            n = counts[f"t{i}"]
            kd_i = out.total / n
            kd_parts.append(kd_i)
            parts[f"train/loss_kd/t{i}"] = kd_i.detach()
            for k, v in out.components.items():
                parts[f"train/kd/t{i}/{k}"] = (v / n).detach()
        kd = self._combine(kd_parts, parts)
        return self._mix(ce_part, kd, parts)

    def _mix(
        self, ce_part: Tensor, kd: Tensor, parts: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        parts["train/loss_kd"] = kd.detach()
        if self.mix["mode"] == "dynamic":
            # sg(CE/KD): KD's gradient is rescaled to CE's magnitude (paper, Eq. dynamic scaling).
            scale = (ce_part / kd.clamp_min(1e-8)).detach()
            loss = scale * kd + ce_part
            parts["train/kd_scale"] = scale
        elif self.mix["mode"] == "fixed":
            loss = float(self.mix["ce_weight"]) * ce_part + float(self.mix["kd_weight"]) * kd
        else:
            raise ValueError(f"mix.mode must be dynamic or fixed; got {self.mix['mode']!r}.")
        parts["train/loss"] = loss.detach()
        return loss, parts

    def _combine(self, kd_parts: list[Tensor], parts: dict[str, Tensor]) -> Tensor:
        """KD = sum_i w_i KD_i with static, softmax-adaptive or best-teacher weights."""
        if self.multi == "static" or len(kd_parts) == 1:
            w = torch.tensor([t.weight for t in self.teachers], device=kd_parts[0].device)
        else:
            scores = torch.stack([self._scores[i] for i in range(len(self.teachers))])
            if self.multi == "best":
                w = torch.zeros_like(scores)
                w[best_teacher(scores)] = 1.0
            else:
                w = adaptive_teacher_weights(scores)
            for i, wi in enumerate(w):
                parts[f"train/teacher_weight/t{i}"] = wi.detach()
        return (torch.stack(kd_parts) * w.to(kd_parts[0].dtype)).sum()

    def _logit_average(
        self,
        s_logits: Tensor,
        batch: dict[str, Any],
        counts: dict[str, Tensor],
        ce_part: Tensor,
        parts: dict[str, Tensor],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One KD against the weighted average of same-vocabulary teachers' logits."""
        logits = [t.runner.logits(batch["input_ids"], batch["attention_mask"])[
            ..., : s_logits.shape[-1]] for t in self.teachers]  # fmt: skip
        avg = average_teacher_logits(logits, [t.weight for t in self.teachers])
        kd0 = self.teachers[0].kd
        div = _DIVERGENCE[kd0["kl"]]
        out = get_loss("kd")(
            s_logits,
            avg,
            batch["labels"],
            divergence=div,
            beta=float(kd0["beta"]),
            temperature=float(kd0["temperature"]),
        )
        kd = out.total / counts["t0"]
        parts["train/loss_kd/avg"] = kd.detach()
        return self._mix(ce_part, kd, parts)
