"""Atomic, resumable checkpoints: model, W, optimizer, scheduler, data position and RNG states."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbench import sources
from xbench.io import atomic_path

log = logging.getLogger("xbench.engine.checkpoint")
_NAME = re.compile(r"^step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can consume."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step_<step>.pt`` atomically, then prune all but the newest ``keep``.

    A checkpoint exists either whole or not at all: ``torch.save`` goes to a temporary file that
    is renamed into place, so a SIGKILL mid-save leaves the previous checkpoint as the latest.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.exists():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(ckpt_dir: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint's state, or ``None`` when the run starts fresh.

    A checkpoint that fails to load (truncated or corrupted on disk after its atomic rename: a
    full disk, a bad copy, a filesystem fault) is reported by path, renamed to
    ``step_N.pt.corrupt`` so that no later resume trips on it again, and the next older one is
    tried; the run then resumes from there.
    """
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("no training state in it")
        except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            bad = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(FileNotFoundError):  # another rank moved it first
                os.replace(path, bad)
            log.warning(
                "checkpoint %s is unreadable (%s: %s); moved to %s, trying the previous one",
                path,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                bad.name,
            )
            continue
        return state
    return None


def run_dir_of(path: str | os.PathLike[str]) -> tuple[Path, Path | None] | None:
    """``(run_dir, checkpoint file or None)`` when ``path`` is an xbench run directory, its
    ``checkpoints/`` folder or one ``step_N.pt``; ``None`` for anything else."""
    p = Path(path).expanduser()
    if p.is_file() and _NAME.match(p.name) and p.parent.name == "checkpoints":
        return p.parent.parent, p
    if p.is_dir() and p.name == "checkpoints" and (p.parent / "config.yaml").is_file():
        return p.parent, None
    if p.is_dir() and (p / "config.yaml").is_file() and (p / "checkpoints").is_dir():
        return p, None
    return None


def load_student(path: str | os.PathLike[str]) -> tuple[Any, Any, str]:
    """The trained student of an xbench run directory (or one of its checkpoints).

    Rebuilds the student from the run's own ``config.yaml`` (same architecture, tokenizer and
    seed) and loads the newest intact checkpoint, or the given ``step_N.pt``.

    Returns:
        ``(model in eval mode on CPU, tokenizer, name)``; name is ``<student>@<run>:step<N>``.
    """
    from omegaconf import OmegaConf

    from xbench.engine.models import load_model, load_tokenizer
    from xbench.errors import UserError

    found = run_dir_of(path)
    if found is None:
        raise UserError(f"model={str(path)!r} is not an xbench run directory or checkpoint.")
    run_dir, ckpt = found
    cfg = OmegaConf.load(run_dir / "config.yaml")
    sources.configure(cfg)  # the plug-in world the student was trained in
    state = (
        torch.load(ckpt, map_location="cpu", weights_only=False)
        if ckpt is not None
        else load_latest(run_dir / "checkpoints")
    )
    if state is None:
        raise UserError(
            f"model={str(path)!r}: {run_dir / 'checkpoints'} holds no intact checkpoint; train "
            "the cell (or resume it) first."
        )
    tok = load_tokenizer(str(cfg.student.tokenizer))
    model = load_model(cfg.student, tok, field="student", seed=int(cfg.seed))
    model.load_state_dict(state["model"])
    return model.eval(), tok, f"{cfg.student.name}@{run_dir.name}:step{state['step']}"
