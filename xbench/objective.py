"""Teachers -> per-teacher KD losses -> one micro-batch objective; the loop never knows which loss.

Per micro-batch, with N_ce and N_i the *global* unit counts of the whole optimizer step (all
micro-batches, all ranks)::

    CE = CE_sum / N_ce,   KD_i = KD_i_sum / N_i,   KD = sum_i w_i KD_i
    L  = mix(CE, KD)      (xbench.losses.combine.mix_ce_kd: dynamic sg(|CE|/|KD|) KD + CE, or fixed)

so the sum of the micro-batch losses is the step's objective. Weights w_i and the mix come from
:mod:`xbench.losses.combine`, the only place that mixes; knobs are checked by
:func:`xbench.losses.options.check_kd_options` before any teacher is loaded.

Logged values: losses (``train/loss*``) are divided by global counts, so the loop *sums* them over
micro-batches and ranks; ratios and weights (:data:`MEAN_KEYS`) are per micro-batch and the loop
*averages* them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from xbench import distributed
from xbench.losses import ChunkOptions, ChunkView, LossOutput
from xbench.losses import get as get_loss
from xbench.losses.combine import (
    average_teacher_logits,
    mix_ce_kd,
    score_kind,
    teacher_scores,
    teacher_weights,
)
from xbench.losses.options import check_kd_options, effective_kd, hybrid_beta
from xbench.losses.pkl import LearnableProjection
from xbench.losses.presets import exact_pairs_from_w, loss_kwargs
from xbench.models import head_size, load_model, load_tokenizer
from xbench.teacher import TeacherRunner
from xbench.tokenpair import projection as proj_mod

# kd.kl (config vocabulary) -> the kd loss's divergence name.
_DIVERGENCE = {"forward": "forward_kl", "reverse": "reverse_kl", "jsd": "jsd"}
# Logged per micro-batch as ratios or weights: the loop averages these over micro-batches and
# ranks (every other logged value is a share of the step's global sum, and is summed).
MEAN_KEYS = (
    "train/kd_scale",
    "train/kd_scale_capped",
    "train/teacher_weight/",
    "train/kd_negative/",
)


def is_mean_key(key: str) -> bool:
    """Whether a logged key is a per-micro-batch ratio (averaged, not summed, over a step)."""
    return any(key == k or (k.endswith("/") and key.startswith(k)) for k in MEAN_KEYS)


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
        runner = TeacherRunner(model, ident, top_k=int(kd["teacher_cache_topk"]), cache_dir=cache)
        t = Teacher(spec.name, method, float(spec.weight), kd, tok, runner, same)
        authors_gold = method == "gold" and kd["semantics"] == "authors"
        if method in ("pkl", "hkl", "xtoken") or authors_gold:
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
        self.mix = {"max_scale": 1000.0, **OmegaConf.to_container(cfg.mix, resolve=True)}
        self.multi = str(cfg.kd.multi_teacher)
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
        """Score teacher ``i`` now when adaptive weights will need it (no logits are kept)."""
        if self.multi not in ("static", "logit_avg") and len(self.teachers) > 1:
            self._scores[i] = teacher_scores(t_logits, labels, kind=score_kind(self.multi))

    def _kd_loss(self, kd: dict[str, Any], s_logits: Tensor, t_logits: Tensor, labels: Tensor):
        """Same-tokenizer KD with every knob it reads (divergence, beta, T, teacher top-k)."""
        preset = loss_kwargs(str(kd["semantics"]), "kd")
        return get_loss("kd")(
            s_logits,
            t_logits[..., : s_logits.shape[-1]],
            labels,
            divergence=_DIVERGENCE[kd["kl"]],
            beta=float(kd["beta"]),
            temperature=float(kd["temperature"]),
            top_k=int(kd["topk"]),
            chunk_size=int(kd["loss_chunk_size"]) or None,
            **preset,
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
            return self._kd_loss(kd, s_logits, t_logits, batch["labels"])
        t_logits = t.runner.logits(tb["input_ids"], tb["attention_mask"])
        self._note(i, t_logits, tb["input_ids"].masked_fill(tb["attention_mask"] == 0, -100))
        al = tb["align"]
        view = ChunkView(
            al.student_chunk, al.teacher_chunk, al.chunk_mask, batch["input_ids"], tb["input_ids"]
        )
        opts: dict[str, Any] = dict(
            temperature=float(kd["temperature"]),
            chunk_method=str(kd["chunk_method"]),
            chunk_size=int(kd["loss_chunk_size"]) or None,
        )
        if t.method != "uld":  # kd.kl as the generalized-JSD beta (0 = forward KL)
            opts["beta"] = hybrid_beta(kd)
        if t.method in ("gold", "hkl", "xtoken"):
            opts["weights"] = (
                (float(kd["gold_matched_weight"]), float(kd["gold_unmatched_weight"]))
                if kd["gold_weights"] == "fixed"
                else "adaptive"
            )
        if t.method in ("pkl", "xtoken"):
            opts["top_k"] = int(kd["topk"])
        # kd.semantics: the preset's fields override xbench's (chunk averaging, weights,
        # truncation, T^2, column rule; xbench.losses.presets).
        options = ChunkOptions(**{**opts, **loss_kwargs(str(kd["semantics"]), t.method)})
        args = (s_logits, t_logits, view)
        if t.method == "uld":
            return get_loss("uld")(*args, options=options)
        if t.method in ("gold", "hkl"):
            assert t.pairs is not None
            return get_loss(t.method)(*args, t.pairs, options=options)
        if t.method == "pkl":
            return get_loss("pkl")(*args, self._w(i, t), options=options)
        if t.method == "xtoken":
            assert t.pairs is not None
            return get_loss("xtoken")(
                *args, t.pairs, self._w(i, t), alpha=float(kd["alpha"]), options=options
            )
        raise ValueError(f"unknown method {t.method!r}")

    def forward(
        self, s_logits: Tensor, batch: dict[str, Any], counts: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The micro-batch loss (already divided by global counts) and its logged parts."""
        ce = get_loss("ce")(s_logits, batch["labels"])
        ce_part = ce.total / counts["ce"]
        if not self.teachers:
            return ce_part, {"train/loss_ce": ce_part.detach(), "train/loss": ce_part.detach()}
        parts: dict[str, Tensor] = {}
        if self.multi == "logit_avg" and len(self.teachers) > 1:
            kd = self._logit_average(s_logits, batch, counts, parts)
        else:
            kd_parts = []
            for i, t in enumerate(self.teachers):
                out = self.teacher_loss(i, t, s_logits, batch)
                n = counts[f"t{i}"]
                kd_i = out.total / n
                kd_parts.append(kd_i)
                parts[f"train/loss_kd/t{i}"] = kd_i.detach()
                parts[f"train/kd_negative/t{i}"] = (kd_i.detach() < 0).float()
                for k, v in out.components.items():
                    parts[f"train/kd/t{i}/{k}"] = (v / n).detach()
            scores = None
            if self.multi not in ("static", "logit_avg") and len(self.teachers) > 1:
                scores = [self._scores[i] for i in range(len(kd_parts))]
            w = teacher_weights(self.multi, [t.weight for t in self.teachers], scores)
            if scores is not None:
                for i, wi in enumerate(w):
                    parts[f"train/teacher_weight/t{i}"] = wi.detach()
            kd = (torch.stack(kd_parts) * w.to(kd_parts[0])).sum()
        loss, logs = mix_ce_kd(
            ce_part,
            kd,
            mode=self.mix["mode"],
            ce_weight=float(self.mix["ce_weight"]),
            kd_weight=float(self.mix["kd_weight"]),
            max_scale=float(self.mix["max_scale"]),
        )
        parts.update({f"train/{k}": v for k, v in logs.items()})
        return loss, parts

    def _logit_average(
        self,
        s_logits: Tensor,
        batch: dict[str, Any],
        counts: dict[str, Tensor],
        parts: dict[str, Tensor],
    ) -> Tensor:
        """One KD against the weighted average of same-vocabulary teachers' logits."""
        logits = [t.runner.logits(batch["input_ids"], batch["attention_mask"])[
            ..., : s_logits.shape[-1]] for t in self.teachers]  # fmt: skip
        avg = average_teacher_logits(logits, [t.weight for t in self.teachers])
        out = self._kd_loss(self.teachers[0].kd, s_logits, avg, batch["labels"])
        kd = out.total / counts["t0"]
        parts["train/loss_kd/avg"] = kd.detach()
        parts["train/kd_negative/avg"] = (kd.detach() < 0).float()
        return kd
