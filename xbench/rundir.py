"""The run-directory contract: one self-describing directory per sweep cell.

Layout (see docs/contracts.md)::

    config.yaml  meta.json  metrics.jsonl  eval/results.json  checkpoints/
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xbench import REPO_ROOT
from xbench.errors import UserError
from xbench.io import read_json, write_text

log = logging.getLogger("xbench.rundir")

# interrupted: stopped by Ctrl-C / SIGTERM (a checkpoint may exist); a rerun resumes it.
STATUSES = ("pending", "running", "done", "failed", "interrupted")
# Keys that do not change what a cell computes: excluded from the config hash so that a rerun
# with another output root, launcher or logging setting still recognises finished cells.
_HASH_EXCLUDE = ("hydra", "out_root", "plan", "wandb", "logging", "resources", "launcher")
_VERSIONED = ("torch", "transformers", "tokenizers", "lm-eval", "hydra-core", "submitit", "xbench")


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """Content hash of the resolved config, ignoring keys that do not change results."""
    container = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    )
    assert isinstance(container, dict)
    kept = {k: v for k, v in container.items() if k not in _HASH_EXCLUDE}
    blob = json.dumps(kept, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_info(repo: Path | None = None) -> dict[str, Any]:
    """Git SHA and dirty flag of the xbench checkout (``None`` outside a checkout)."""
    repo = repo or REPO_ROOT
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that change results."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def slurm_info() -> dict[str, str]:
    """SLURM job identifiers from the environment (empty outside SLURM)."""
    keys = (
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "SLURM_NTASKS",
        "SLURM_NODELIST",
        "SLURM_JOB_PARTITION",
    )
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


class RunDir:
    """Reads and writes one cell's run directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    def meta(self) -> dict[str, Any]:
        return read_json(self.meta_path) if self.meta_path.exists() else {}

    def is_done(self, cfg_hash: str) -> bool:
        """True when this directory already holds a finished run of the same config."""
        meta = self.meta()
        return meta.get("status") == "done" and meta.get("config_hash") == cfg_hash

    def start(self, cfg: DictConfig, cell: dict[str, Any], experiment: str) -> dict[str, Any]:
        """Write the resolved config and a ``running`` meta.json; keep earlier attempts' timings."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        previous = self.meta()
        meta = {
            "status": "running",
            "config_hash": config_hash(cfg),
            "experiment": experiment,
            "cell": cell,
            "git": git_info(),
            "versions": versions(),
            "host": socket.gethostname(),
            "slurm": slurm_info(),
            "seed": cell.get("seed"),
            "attempts": int(previous.get("attempts", 0)) + 1,
            "timings": {"started": time.time(), **previous.get("timings", {})},
            "error": None,
        }
        _write_meta(self.meta_path, meta)
        return meta

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into meta.json atomically (``timings`` is merged, not replaced)."""
        meta = self.meta()
        timings = {**meta.get("timings", {}), **fields.pop("timings", {})}
        meta.update(fields)
        meta["timings"] = timings
        if meta.get("status") not in STATUSES:
            raise ValueError(f"meta.json status must be one of {STATUSES}, got {meta['status']!r}.")
        _write_meta(self.meta_path, meta)
        return meta

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold ``.lock`` of this run directory while writing it; see :func:`lock`."""
        return lock(self.path / ".lock", f"run directory {self.path}")


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as ``None``: JSON has no NaN, and meta.json must parse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    text = json.dumps(_finite(meta), indent=2, sort_keys=True, default=str, allow_nan=False)
    write_text(path, text + "\n")


# --------------------------------------------------------------------------- locks


class Locked(UserError):
    """Another live process holds the lock."""


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock holder may still be running (unknown means yes)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job and holder.get("pid") != os.getpid():
        return False  # an earlier attempt of this same (requeued) SLURM job
    if holder.get("host") != socket.gethostname():
        return True  # another machine: no way to look; the user decides
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


@contextlib.contextmanager
def lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock file (pid, host, SLURM job id) for the duration of the block.

    A second process is refused with :class:`Locked`. A lock whose holder is gone (same host and
    its pid no longer exists, or an earlier attempt of the same requeued SLURM job) is stale:
    it is replaced with a logged warning.
    """
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "since": time.time(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:  # being written right now, or torn by a crash
                fresh = time.time() - path.stat().st_mtime < 10
                if fresh:
                    time.sleep(0.2)
                    continue
            elif _alive(holder):
                since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("since", 0)))
                raise Locked(
                    f"{what} is being written by pid {holder.get('pid')} on "
                    f"{holder.get('host')} (since {since}); wait for it to finish, or delete "
                    f"{path} if that process is gone."
                ) from None
            log.warning("removing the stale lock %s (holder %s is gone)", path, holder)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise Locked(f"{what}: could not take {path}; delete it if no process is writing there.")
    try:
        yield
    finally:
        holder = _holder(path)
        if holder is not None and holder.get("pid") == me["pid"] and holder["host"] == me["host"]:
            path.unlink(missing_ok=True)
