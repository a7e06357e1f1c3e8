"""One training session: student, teachers, objective, data, optimizer; and one step of it.

``train()`` (``engine/session.py``) adds logging, checkpoints and signals around this; benchmarks
time ``forward_backward`` + ``optimizer_step`` directly.
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

from xbench.engine import checkpoint, distributed
from xbench.engine.corpus import STREAMING_SOURCES, StreamingCorpus, StreamState
from xbench.engine.data import Collator, PairDataset, Side, StepBatches, load_texts, pack
from xbench.engine.memory import use_checkpointing
from xbench.engine.metrics import numeral_ids, numeral_stats
from xbench.engine.models import load_model, load_tokenizer
from xbench.engine.objective import Objective, is_mean_key
from xbench.engine.teachers import build_teachers
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
    # Learned W values: their own AdamW (paper: lr 1e-2, no weight decay, never clipped, no
    # schedule). A separate optimizer keeps the student's state dict pure model parameters,
    # which FSDP's full-state-dict gathering needs.
    opt_w: torch.optim.Optimizer | None = None
    # A streamed corpus (data.source shards|hf): positions consumed, epoch, tokens seen.
    stream: StreamState | None = None
    tokens_seen: int = 0  # student tokens of every rank since the run began

    @property
    def fsdp(self) -> bool:
        return self.info.world_size > 1 and str(self.cfg.train.parallel) == "fsdp"

    @property
    def accum(self) -> int:
        tc = self.cfg.train
        return int(tc.global_batch_size) // (int(tc.micro_batch_size) * self.info.world_size)

    def loader(self) -> DataLoader:
        """Micro-batches from ``start`` on; (step, micro, rank) addressing makes resume exact.

        A streamed corpus resumes from the stream positions of the checkpoint instead."""
        tc = self.cfg.train
        if self.stream is not None:
            corpus = StreamingCorpus(
                self.cfg.data,
                self.dataset,
                self.info.rank,
                self.info.world_size,
                int(self.cfg.seed),
                positions=self.stream.positions,
                rotation=self.stream.rotation,
            )
            return DataLoader(
                corpus,
                batch_size=int(tc.micro_batch_size),
                collate_fn=self.collate,
                num_workers=int(self.cfg.data.num_workers),
            )
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
        """Accumulate the gradients of one optimizer step; returns its logs and token count.

        Losses are shares of the step's global sum and are summed over micro-batches and ranks;
        ratios and weights (``objective.is_mean_key``) are averaged."""
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
        n_micro = len(micro) * info.world_size
        for k in list(logs):
            logs[k] = distributed.all_reduce_sum(logs[k].clone())
            if is_mean_key(k):
                logs[k] = logs[k] / n_micro
        return logs, n_tokens

    def optimizer_step(self) -> torch.Tensor:
        """Clip the student's gradients (never W's), step, schedule, zero; returns the norm.

        W lives outside the DDP/FSDP wrapper, so its gradient is averaged over ranks here: each
        rank then applies the same update to the same values and the copies stay bit-identical.
        """
        norm = torch.nn.utils.clip_grad_norm_(
            self.student.parameters(), float(self.cfg.optim.grad_clip)
        )
        self.opt.step()
        if self.opt_w is not None:
            distributed.average_grads(self.objective.w_parameters())
            self.opt_w.step()
            self.opt_w.zero_grad(set_to_none=True)
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs. Under FSDP this is a collective: every rank must call it;
        rank 0 receives the full (unsharded, CPU) model and optimizer state, the others empty."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model = get_model_state_dict(self.student, options=opts)
            optim = get_optimizer_state_dict(self.student, self.opt, options=opts)
        else:
            model, optim = self.student.state_dict(), self.opt.state_dict()
        data = None
        if self.stream is not None:
            # Each rank streams its own shards: rank 0's file holds every rank's positions.
            data = [None] * self.info.world_size
            if self.info.world_size > 1:
                torch.distributed.all_gather_object(data, self.stream.state_dict())
            else:
                data[0] = self.stream.state_dict()
        return {
            "model": model,
            "optimizer": optim,
            "data": data,
            "tokens_seen": self.tokens_seen,
            "w_optimizer": None if self.opt_w is None else self.opt_w.state_dict(),
            "objective": self.objective.state_dict(),
            "scheduler": self.sched.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`state_dict` (every rank loads the full file)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.student, state["model"], options=opts)
            set_optimizer_state_dict(self.student, self.opt, state["optimizer"], options=opts)
        else:
            self.student.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        if self.opt_w is not None and state.get("w_optimizer") is not None:
            self.opt_w.load_state_dict(state["w_optimizer"])
        self.objective.load_state_dict(state["objective"])
        self.sched.load_state_dict(state["scheduler"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        if self.stream is not None:
            data = state.get("data") or []
            if len(data) != self.info.world_size:
                raise ValueError(
                    f"the checkpoint's streamed corpus was read by {len(data)} rank(s), this job "
                    f"has {self.info.world_size}; resume with the same number of ranks."
                )
            self.stream.load_state_dict(data[self.info.rank])
        checkpoint.set_rng_state(state["rng"])
        self.start = int(state["step"])


def build_session(cfg: DictConfig) -> Session:
    """Load models and data, build W and the optimizer for the resolved cell ``cfg``."""
    tc, oc = cfg.train, cfg.optim
    info = distributed.init_distributed(tc.device, tc.get("dist_timeout_s"))
    torch.manual_seed(cfg.seed)
    if tc.get("threads"):
        torch.set_num_threads(int(tc.threads))
    s_tok = load_tokenizer(cfg.student.tokenizer)
    student = load_model(cfg.student, s_tok, field="student", seed=cfg.seed, device=info.device).to(
        info.device
    )
    if use_checkpointing(cfg):
        # Keep only each decoder layer's input and recompute the rest in backward: about a
        # third more compute for a fraction of the activation memory (xbench.engine.memory).
        student.config.use_cache = False
        student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    teachers = build_teachers(cfg, s_tok, student, info.device)
    objective = Objective(cfg, teachers).to(info.device)

    streamed = str(cfg.data.source) in STREAMING_SOURCES
    texts = (
        []
        if streamed
        else pack(load_texts(cfg.data), s_tok, int(cfg.data.seq_len), str(cfg.data.separator))
    )
    sides = [Side(t.tok, t.same_tokenizer, str(tc.aligner)) for t in teachers]
    dataset = PairDataset(texts, s_tok, sides, int(cfg.data.seq_len))
    collate = Collator(pad_id(s_tok), [pad_id(t.tok) for t in teachers])
    # Validates the batch geometry before any work (one clear error).
    StepBatches(
        max(1, len(dataset)),
        int(tc.global_batch_size),
        int(tc.micro_batch_size),
        info.world_size,
        info.rank,
        int(cfg.seed),
        0,
        0,
    )

    steps = int(tc.steps)
    model = distributed.wrap_student(student, info, str(tc.parallel))
    # FSDP2 shards the student's parameters in place, so the optimizer is built after wrapping.
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad],
        lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay,
    )  # fmt: skip
    w_params = objective.w_parameters()
    opt_w = (
        torch.optim.AdamW(w_params, lr=oc.w_lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=0.0)
        if w_params
        else None
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(int(oc.warmup_steps), steps, float(oc.min_lr_ratio))
    )
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
        opt_w=opt_w,
        stream=StreamState(max(1, int(cfg.data.num_workers))) if streamed else None,
    )
