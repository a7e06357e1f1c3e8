"""Atomic, resumable checkpoints: model, W, optimizer, scheduler, data position and RNG states."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbench.io import atomic_path

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
    """The newest checkpoint's state, or ``None`` when the run starts fresh."""
    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        return None
    return torch.load(ckpts[-1], map_location="cpu", weights_only=False)
