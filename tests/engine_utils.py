"""Helpers for the engine tests: compose a cell of an experiment and train it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")


def cell_cfg(*overrides: str, experiment: str = "mini_smoke") -> DictConfig:
    """The resolved config of one cell (what a sweep job trains with)."""
    from xbench.config.cells import resolve_cell

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("sweep", overrides=[f"+experiment={experiment}", *overrides])
    return resolve_cell(cfg)[0]


def state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Model weights of the newest checkpoint of a run."""
    from xbench.engine.checkpoint import load_latest

    ckpt = load_latest(Path(run_dir) / "checkpoints")
    assert ckpt is not None, f"no checkpoint in {run_dir}"
    return ckpt["model"]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def run_module(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` with the test environment; raise with its output on failure."""
    full = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """``python -m ...`` arguments that start ``args`` (``-m MODULE ...``) on ``nproc`` gloo
    ranks on this machine, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        *args,
    ]
