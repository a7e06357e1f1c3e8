"""Teachers -> per-teacher KD losses -> one micro-batch objective; the loop never knows which loss.

Per micro-batch, with N_ce and N_i the *global* unit counts of the whole optimizer step (all
micro-batches, all ranks)::

    CE = CE_sum / N_ce,   KD_i = KD_i_sum / N_i,   KD = sum_i w_i KD_i
    L  = mix(CE, KD)      (xbench.losses.combine.mix_ce_kd: dynamic sg(|CE|/|KD|) KD + CE, or fixed)

so the sum of the micro-batch losses is the step's objective. Weights w_i and the mix come from
:mod:`xbench.losses.combine`, the only place that mixes; knobs are checked by
:func:`xbench.losses.options.check_kd_options` before any teacher is loaded
(:func:`xbench.engine.teachers.build_teachers`).

Logged values: losses (``train/loss*``) are divided by global counts, so the loop *sums* them over
micro-batches and ranks; ratios and weights (:data:`MEAN_KEYS`) are per micro-batch and the loop
*averages* them.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from xbench.engine import distributed
from xbench.engine.teachers import Teacher
from xbench.losses import ChunkOptions, ChunkView, LossOutput
from xbench.losses import get as get_loss
from xbench.losses.combine import (
    average_teacher_logits,
    mix_ce_kd,
    score_kind,
    teacher_scores,
    teacher_weights,
)
from xbench.losses.options import hybrid_beta
from xbench.losses.pkl import LearnableProjection
from xbench.losses.presets import loss_kwargs
from xbench.vocab import HYBRID, LEARNS_W

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


class Objective(nn.Module):
    """CE plus the weighted per-teacher KD losses of one cell (holds learnable W values)."""

    def __init__(self, cfg: DictConfig, teachers: list[Teacher]) -> None:
        super().__init__()
        self.teachers = teachers
        self.mix = OmegaConf.to_container(cfg.mix, resolve=True)
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
            if t.projection is not None and t.method in LEARNS_W and t.kd["learn_w"]:
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
        if t.method in HYBRID:
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
