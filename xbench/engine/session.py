"""``train(cfg, run_dir)``: distil a student from 0..N teachers; ``python -m xbench.train``.

One optimizer step consumes ``train.global_batch_size`` packed sequences, split into micro-batches
of ``train.micro_batch_size`` per rank; gradient accumulation is derived from the two and the
world size. Every loss is a sum over units divided by the *global* unit count of the step (counted
by the collator before any forward), so any split of the same global batch gives the same update.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from xbench import CONF_DIR, sources
from xbench.engine import checkpoint, distributed
from xbench.engine.loop import build_session
from xbench.engine.metrics import MetricsLogger
from xbench.io import write_json

_CONF = CONF_DIR

log = logging.getLogger("xbench.train")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; a diagnostic dump was written next to the checkpoints."""


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train the student of ``cfg`` and return a summary; resumes from ``run_dir/checkpoints``.

    Args:
        cfg: the resolved cell config (``student``, ``teachers``, ``data``, ``optim``, ``train``).
        run_dir: the cell's run directory (metrics.jsonl and checkpoints go there).

    Returns:
        ``{"steps", "final_loss", "seconds", "student", "tokenizer", "dist"}`` with ``student``
        the trained model (unwrapped, on the training device).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sources.configure(cfg)  # plug-ins read their keys (the miniature world: cfg.world)
    sess = build_session(cfg)
    ckpt_dir = run_dir / "checkpoints"
    state = checkpoint.load_latest(ckpt_dir)
    if state is not None:
        sess.load_state_dict(state)
    tc, steps, start = cfg.train, sess.steps, sess.start
    loader = sess.loader()
    logger = MetricsLogger(
        run_dir / "metrics.jsonl",
        enabled=sess.info.is_main,
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
    # data.token_budget (student tokens over all ranks) may end the run before train.steps; the
    # learning-rate schedule still spans train.steps.
    budget = cfg.data.get("token_budget")
    seen_epoch = sess.stream.epoch if sess.stream is not None else 0
    if _budget_spent(sess.tokens_seen, budget):
        steps = start  # a resumed run whose budget was already spent: nothing to do
    for step in range(start, steps):
        t0 = time.time()
        micro = [next(batches) for _ in range(sess.accum)]
        log_now = (step + 1) % int(tc.log_every) == 0 or step == start or step + 1 == steps
        logs, n_tokens = sess.forward_backward(micro, with_stats=log_now)
        dev = sess.info.device  # NCCL reduces GPU tensors only
        sess.tokens_seen += int(distributed.all_reduce_sum(torch.tensor(n_tokens, device=dev)))
        if sess.stream is not None:
            for b in micro:
                sess.stream.consume(b)
            # The highest epoch any stream of any rank has reached (streams are not in lockstep).
            epoch = int(distributed.all_reduce_max(torch.tensor(sess.stream.epoch, device=dev)))
            if epoch > seen_epoch and sess.info.is_main:
                log.warning("step %d: the corpus is being read again (epoch %d)", step + 1, epoch)
            seen_epoch = epoch
        loss_val = float(logs["train/loss"])
        if not math.isfinite(loss_val):
            _dump(ckpt_dir, step, micro, logs)
            raise NonFiniteLoss(
                f"non-finite loss at step {step}; diagnostics in {ckpt_dir}/nonfinite_{step}.pt. "
                "Lower optim.lr or check the teacher/W inputs."
            )
        grad_norm = sess.optimizer_step()
        if tc.get("debug_sleep_s"):  # tests of time limits and requeue need slow steps
            time.sleep(float(tc.debug_sleep_s))
        last_loss = loss_val
        dt = time.time() - t0
        if log_now:
            rec = {k: float(v) for k, v in logs.items() if not k.startswith("_")}
            rec["train/numeral_mass"] = float(logs["_num_mass"] / logs["_num_mass_n"].clamp_min(1))
            rec["train/numeral_target_prob"] = float(
                logs["_num_target_prob"] / logs["_num_target_n"].clamp_min(1)
            )
            rec.update(
                {
                    "train/grad_norm": float(grad_norm),
                    "train/lr": sess.sched.get_last_lr()[0],
                    "train/step_s": dt,
                    "train/tokens_per_s": n_tokens * sess.info.world_size / dt,
                    "train/peak_mem_mb": _peak_mb(sess.info.device),
                    "data/tokens": sess.tokens_seen,
                }
            )
            if sess.stream is not None:
                rec["data/epoch"] = epoch
            if sess.opt_w is not None and sess.info.world_size > 1:
                # A collective on every rank (log_now is the same everywhere): 0.0 means W is
                # bit-identical across ranks.
                rec["train/w_rank_diff"] = distributed.max_rank_diff(sess.objective.w_parameters())
            logger.log(step + 1, rec)
        logger.advance()
        done = step + 1 == steps or _budget_spent(sess.tokens_seen, budget)
        if done or (step + 1) % int(tc.ckpt_every) == 0 or stop["flag"]:
            # Every rank gathers (a collective under FSDP); rank 0 writes.
            state = {"step": step + 1, **sess.state_dict(), "rng": checkpoint.rng_state()}
            if sess.info.is_main:
                checkpoint.save(ckpt_dir, step + 1, state, keep=int(tc.keep_checkpoints))
            distributed.barrier()
        if stop["flag"] and not done:
            logger.close()
            signal.signal(signal.SIGTERM, prev)
            raise SystemExit(f"stopped by SIGTERM after step {step + 1}; resume to continue.")
        if done:
            steps = step + 1  # == train.steps unless the token budget ended the run first
            break
    logger.close()
    signal.signal(signal.SIGTERM, prev)
    # The last collective was the final checkpoint's barrier. Every rank now leaves the process
    # group, so rank 0 evaluates alone (from the unwrapped student, or the gathered checkpoint
    # under FSDP) and no rank waits in a collective whose timeout an evaluation could outlast.
    # The DDP wrapper goes first: freed after the group, its reducer would destroy the gloo group
    # while holding the GIL that gloo's worker thread needs to finish (a deadlock seen here).
    sess.model = sess.student
    del loader, batches
    gc.collect()
    distributed.cleanup()
    return {
        "steps": steps,
        "final_loss": last_loss,
        "seconds": time.time() - t_start,
        "resumed_from": start,
        "world_size": sess.info.world_size,
        "student": sess.student,
        "tokenizer": sess.s_tok,
        "dist": sess.info,
    }


def _budget_spent(tokens: int, budget: int | None) -> bool:
    return budget is not None and tokens >= int(budget)


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dump(ckpt_dir: Path, step: int, micro: list[dict[str, Any]], logs: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "logs": logs, "batches": micro}, ckpt_dir / f"nonfinite_{step}.pt")


# Absolute: a relative path is resolved against the caller's package when main() is imported.
@hydra.main(version_base="1.3", config_path=str(_CONF), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    """Train one cell of an experiment into ``run_dir`` (default: Hydra's output directory).

    ``python -m xbench.train +experiment=mini_vs_gold cell=pkl-A seed=1 run_dir=DIR``; under
    ``torchrun`` or ``srun`` every rank runs this and joins the process group.
    """
    import contextlib

    from hydra.core.hydra_config import HydraConfig

    from xbench.config.cells import resolve_cell
    from xbench.config.cli import guard
    from xbench.io import write_text
    from xbench.rundir import RunDir

    resolved, _ = resolve_cell(cfg)
    run_dir = Path(cfg.get("run_dir") or HydraConfig.get().runtime.output_dir)
    main_rank = distributed.env_rank() == 0
    with contextlib.ExitStack() as stack:
        if main_rank:
            with guard(PROG):
                stack.enter_context(RunDir(run_dir).lock())
            # The resolved config makes the directory self-describing (and evaluable:
            # ``python -m xbench.evaluate model=RUN_DIR``).
            write_text(run_dir / "config.yaml", OmegaConf.to_yaml(resolved, resolve=True))
        summary = train(resolved, run_dir)
        if summary["dist"].is_main:
            write_json(
                run_dir / "train_summary.json",
                {
                    k: v
                    for k, v in summary.items()
                    if k in ("steps", "final_loss", "seconds", "world_size", "resumed_from")
                },
            )
    distributed.cleanup()


PROG = "xbench.train"


def _help() -> str:
    from xbench.config.cli import catalogue

    return (
        "usage: python -m xbench.train +experiment=NAME cell=CELL [seed=N] [run_dir=DIR]"
        " [key=value ...]\n"
        "  Trains one cell (no evaluation) into run_dir (default: Hydra's output directory),\n"
        "  resuming from its newest intact checkpoint. Under torchrun/srun every rank runs it.\n"
        + catalogue()
    )


def _run(argv: list[str]) -> int:
    from xbench.config import validate
    from xbench.config.cli import compose, strip_flags
    from xbench.rundir import RunDir

    cfg = compose("train", strip_flags(argv), hydra_cfg=True)
    validate(cfg)
    run_dir = cfg.get("run_dir") or cfg.hydra.run.dir
    if distributed.env_rank() == 0:
        with RunDir(run_dir).lock():  # refuse a second writer before Hydra writes .hydra/ there
            pass
    extra = [f"hydra.run.dir={cfg.run_dir}"] if cfg.get("run_dir") else []
    sys.argv = [sys.argv[0], *argv, *extra]
    _hydra_main()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: validates the config, then trains; returns the exit code."""
    from xbench.config.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_cli(PROG, argv, _run, _help)
