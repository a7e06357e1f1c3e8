"""One training session: student, teachers, objective, data, optimizer; and one step of it.

``train()`` (xbench/train.py) adds logging, checkpoints and signals around this; benchmarks time
``forward_backward`` + ``optimizer_step`` directly.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from xbench import checkpoint, distributed
from xbench.data import Collator, PairDataset, Side, StepBatches, load_texts, pack
from xbench.metrics import numeral_ids, numeral_stats
from xbench.models import load_model, load_tokenizer
from xbench.objective import Objective, build_teachers
from xbench.tokenpair.canon import canonical_vocab


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up, ``warmup`` steps, then cosine decay to ``min_ratio`` x lr at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def pad_id(tok: Any) -> int:
    """The id used to fill padding: pad, else eos, else 0 (Llama-3 has no pad token).

    Its value never matters: padding is masked out of attention, labels and alignments.
    """
    for tid in (tok.pad_token_id, tok.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """Move a collated batch (tensors, per-teacher dicts, alignments) to ``device``."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif k == "teachers":
            out[k] = [None if t is None else to_device(t, device) for t in v]
        elif hasattr(v, "to") and not isinstance(v, dict):
            out[k] = v.to(device)
        else:
            out[k] = v
    return out


@dataclass
class Session:
    """Everything one optimizer step needs."""

    cfg: DictConfig
    info: distributed.DistInfo
    s_tok: Any
    student: nn.Module
    model: nn.Module  # the student, wrapped for data parallelism
    objective: Objective
    dataset: PairDataset
    collate: Collator
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    num_ids: torch.Tensor
    steps: int
    start: int = 0

    @property
    def accum(self) -> int:
        tc = self.cfg.train
        return int(tc.global_batch_size) // (int(tc.micro_batch_size) * self.info.world_size)

    def loader(self) -> DataLoader:
        """Micro-batches from ``start`` on; (step, micro, rank) addressing makes resume exact."""
        tc = self.cfg.train
        sampler = StepBatches(
            len(self.dataset),
            int(tc.global_batch_size),
            int(tc.micro_batch_size),
            self.info.world_size,
            self.info.rank,
            int(self.cfg.seed),
            self.start,
            self.steps,
        )
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=int(self.cfg.data.num_workers),
        )

    def forward_backward(
        self, micro: list[dict[str, Any]], with_stats: bool = True
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Accumulate the gradients of one optimizer step; returns summed logs and token count."""
        info = self.info
        amp = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if info.device.startswith("cuda") and self.cfg.train.precision == "bf16"
            else nullcontext()
        )
        counts = self.objective.global_counts(micro)
        logs: dict[str, torch.Tensor] = {}
        n_tokens = 0
        self.model.train()
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            no_sync = getattr(self.model, "no_sync", None)
            ctx = no_sync() if (no_sync is not None and not last) else nullcontext()
            with ctx, amp:
                batch = to_device(batch, info.device)
                out = self.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                )
                loss, parts = self.objective(out.logits, batch, counts)
                # DDP averages gradients over ranks; losses are already divided by the global
                # count, so undo the average to keep the sum-over-global-units semantics.
                (loss * info.world_size).backward()
            for k, v in parts.items():
                logs[k] = logs.get(k, 0) + v.detach().float()
            if with_stats:
                stats = numeral_stats(out.logits.detach(), batch["labels"], self.num_ids)
                for k, v in stats.items():
                    logs[f"_num_{k}"] = logs.get(f"_num_{k}", 0) + v.float()
            n_tokens += int(batch["attention_mask"].sum())
        for k in list(logs):
            logs[k] = distributed.all_reduce_sum(logs[k].clone())
        return logs, n_tokens

    def optimizer_step(self) -> torch.Tensor:
        """Clip the student's gradients (never W's), step, schedule, zero; returns the norm."""
        norm = torch.nn.utils.clip_grad_norm_(
            self.student.parameters(), float(self.cfg.optim.grad_clip)
        )
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.student.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.start = int(state["step"])


def build_session(cfg: DictConfig) -> Session:
    """Load models and data, build W and the optimizer for the resolved cell ``cfg``."""
    tc, oc = cfg.train, cfg.optim
    info = distributed.init_distributed(tc.device)
    torch.manual_seed(cfg.seed)
    if tc.get("threads"):
        torch.set_num_threads(int(tc.threads))
    s_tok = load_tokenizer(cfg.student.tokenizer)
    student = load_model(cfg.student, s_tok, field="student", seed=cfg.seed).to(info.device)
    teachers = build_teachers(cfg, s_tok, student, info.device)
    objective = Objective(cfg, teachers).to(info.device)

    texts = pack(load_texts(cfg.data), s_tok, int(cfg.data.seq_len), str(cfg.data.separator))
    sides = [Side(t.tok, t.same_tokenizer, str(tc.aligner)) for t in teachers]
    dataset = PairDataset(texts, s_tok, sides, int(cfg.data.seq_len))
    collate = Collator(pad_id(s_tok), [pad_id(t.tok) for t in teachers])
    # Validates the batch geometry before any work (one clear error).
    StepBatches(
        len(dataset),
        int(tc.global_batch_size),
        int(tc.micro_batch_size),
        info.world_size,
        info.rank,
        int(cfg.seed),
        0,
        0,
    )

    steps = int(tc.steps)
    groups: list[dict[str, Any]] = [
        {
            "params": [p for p in student.parameters() if p.requires_grad],
            "lr": oc.lr,
            "weight_decay": oc.weight_decay,
        }
    ]
    w_params = objective.w_parameters()
    if w_params:  # learned W: own group, own lr, no weight decay, never clipped (paper)
        groups.append({"params": w_params, "lr": oc.w_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps)
    lam = lr_lambda(int(oc.warmup_steps), steps, float(oc.min_lr_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lam] + [lambda _: 1.0] * (len(groups) - 1))
    model = distributed.wrap_student(student, info, str(tc.parallel))
    return Session(
        cfg,
        info,
        s_tok,
        student,
        model,
        objective,
        dataset,
        collate,
        opt,
        sched,
        numeral_ids(canonical_vocab(s_tok)),
        steps,
    )
