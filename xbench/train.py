"""``train(cfg, run_dir)``: distil a student from 0..N teachers; ``python -m xbench.train``.

One optimizer step consumes ``train.global_batch_size`` packed sequences, split into micro-batches
of ``train.micro_batch_size`` per rank; gradient accumulation is derived from the two and the
world size. Every loss is a sum over units divided by the *global* unit count of the step (counted
by the collator before any forward), so any split of the same global batch gives the same update.
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from xbench import checkpoint, distributed
from xbench.data import Collator, PairDataset, Side, StepBatches, load_texts, pack
from xbench.io import write_json
from xbench.metrics import MetricsLogger, numeral_ids, numeral_stats
from xbench.models import load_model, load_tokenizer
from xbench.objective import Objective, build_teachers
from xbench.tokenpair.canon import canonical_vocab


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; a diagnostic dump was written next to the checkpoints."""


def _lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _configure_world(cfg: DictConfig) -> None:
    if cfg.get("world") is not None:
        from xbench.mini import world

        world.configure(OmegaConf.to_container(cfg.world, resolve=True))  # type: ignore[arg-type]


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train the student of ``cfg`` and return a summary; resumes from ``run_dir/checkpoints``.

    Args:
        cfg: the resolved cell config (``student``, ``teachers``, ``data``, ``optim``, ``train``).
        run_dir: the cell's run directory (metrics.jsonl and checkpoints go there).

    Returns:
        ``{"steps", "final_loss", "seconds", "student"}`` with ``student`` the trained model
        (unwrapped, on the training device) and its tokenizer under ``tokenizer``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tc, oc = cfg.train, cfg.optim
    _configure_world(cfg)
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
    collate = Collator(int(s_tok.pad_token_id), [int(t.tok.pad_token_id) for t in teachers])

    steps = int(tc.steps)
    w_params = objective.w_parameters()
    groups: list[dict[str, Any]] = [
        {
            "params": [p for p in student.parameters() if p.requires_grad],
            "lr": oc.lr,
            "weight_decay": oc.weight_decay,
        }
    ]
    if w_params:  # learned W: own group, own lr, no weight decay, never clipped (paper)
        groups.append({"params": w_params, "lr": oc.w_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps)
    lam = _lr_lambda(int(oc.warmup_steps), steps, float(oc.min_lr_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lam] + [lambda _: 1.0] * (len(groups) - 1))

    ckpt_dir = run_dir / "checkpoints"
    start = 0
    state = checkpoint.load_latest(ckpt_dir)
    if state is not None:
        student.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        start = int(state["step"])

    model = distributed.wrap_student(student, info, str(tc.parallel))
    sampler = StepBatches(
        len(dataset),
        int(tc.global_batch_size),
        int(tc.micro_batch_size),
        info.world_size,
        info.rank,
        int(cfg.seed),
        start,
        steps,
    )
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=int(cfg.data.num_workers)
    )
    accum = sampler.accum
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if info.device.startswith("cuda") and tc.precision == "bf16"
        else nullcontext()
    )
    num_ids = numeral_ids(canonical_vocab(s_tok))
    logger = MetricsLogger(
        run_dir / "metrics.jsonl",
        enabled=info.is_main,
        wandb_cfg=OmegaConf.to_container(cfg.wandb, resolve=True) if cfg.get("wandb") else None,
        total_steps=steps,
        start_step=start,
        run_name=run_dir.name,
        config={},
    )
    # A SLURM preemption / timeout signal lets the current step finish, then checkpoints.
    stop = {"flag": False}
    prev = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))

    t_start, last_loss = time.time(), float("nan")
    batches = iter(loader)
    model.train()
    for step in range(start, steps):
        t0 = time.time()
        micro = [next(batches) for _ in range(accum)]
        counts = objective.global_counts(micro)
        logs: dict[str, torch.Tensor] = {}
        n_tokens = 0
        for i, batch in enumerate(micro):
            sync = i == accum - 1
            ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else nullcontext()
            with ctx, amp:
                batch = _to(batch, info.device)
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                loss, parts = objective(out.logits, batch, counts)
                # DDP averages gradients over ranks; losses are already divided by the global
                # count, so undo the average to keep the sum-over-global-units semantics.
                (loss * info.world_size).backward()
            for k, v in parts.items():
                logs[k] = logs.get(k, 0) + v.detach().float()
            stats = numeral_stats(out.logits.detach(), batch["labels"], num_ids)
            for k, v in stats.items():
                logs[f"_num_{k}"] = logs.get(f"_num_{k}", 0) + v.float()
            n_tokens += int(batch["attention_mask"].sum())
        for k in list(logs):
            logs[k] = distributed.all_reduce_sum(logs[k].clone())
        loss_val = float(logs["train/loss"])
        if not math.isfinite(loss_val):
            _dump(ckpt_dir, step, micro, logs)
            raise NonFiniteLoss(
                f"non-finite loss at step {step}; diagnostics in {ckpt_dir}/nonfinite_{step}.pt. "
                "Lower optim.lr or check the teacher/W inputs."
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), float(oc.grad_clip))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        last_loss = loss_val
        dt = time.time() - t0
        if (step + 1) % int(tc.log_every) == 0 or step == start or step + 1 == steps:
            rec = {k: float(v) for k, v in logs.items() if not k.startswith("_")}
            rec["train/numeral_mass"] = float(logs["_num_mass"] / logs["_num_mass_n"].clamp_min(1))
            rec["train/numeral_target_prob"] = float(
                logs["_num_target_prob"] / logs["_num_target_n"].clamp_min(1)
            )
            rec.update(
                {
                    "train/grad_norm": float(grad_norm),
                    "train/lr": sched.get_last_lr()[0],
                    "train/step_s": dt,
                    "train/tokens_per_s": n_tokens * info.world_size / dt,
                    "train/peak_mem_mb": _peak_mb(info.device),
                }
            )
            logger.log(step + 1, rec)
        logger.advance()
        done = step + 1 == steps
        if done or (step + 1) % int(tc.ckpt_every) == 0 or stop["flag"]:
            if info.is_main:
                checkpoint.save(
                    ckpt_dir,
                    step + 1,
                    {
                        "step": step + 1,
                        "model": student.state_dict(),
                        "objective": objective.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rng": checkpoint.rng_state(),
                    },
                    keep=int(tc.keep_checkpoints),
                )
            distributed.barrier()
        if stop["flag"] and not done:
            logger.close()
            signal.signal(signal.SIGTERM, prev)
            raise SystemExit(f"stopped by SIGTERM after step {step + 1}; resume to continue.")
    logger.close()
    signal.signal(signal.SIGTERM, prev)
    return {
        "steps": steps,
        "final_loss": last_loss,
        "seconds": time.time() - t_start,
        "student": student,
        "tokenizer": s_tok,
        "dist": info,
    }


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif k == "teachers":
            out[k] = [None if t is None else _to(t, device) for t in v]
        elif hasattr(v, "to") and not isinstance(v, dict):
            out[k] = v.to(device)
        else:
            out[k] = v
    return out


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dump(ckpt_dir: Path, step: int, micro: list[dict[str, Any]], logs: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "logs": logs, "batches": micro}, ckpt_dir / f"nonfinite_{step}.pt")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Train one cell of an experiment into ``run_dir`` (default: Hydra's output directory).

    ``python -m xbench.train +experiment=mini_vs_gold cell=pkl-A seed=1 run_dir=DIR``; under
    ``torchrun`` or ``srun`` every rank runs this and joins the process group.
    """
    from hydra.core.hydra_config import HydraConfig

    from xbench.cells import resolve_cell

    resolved, _ = resolve_cell(cfg)
    run_dir = Path(cfg.get("run_dir") or HydraConfig.get().runtime.output_dir)
    summary = train(resolved, run_dir)
    if summary["dist"].is_main:
        write_json(
            run_dir / "train_summary.json",
            {k: v for k, v in summary.items() if k in ("steps", "final_loss", "seconds")},
        )
    distributed.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
