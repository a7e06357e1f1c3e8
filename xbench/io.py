"""Atomic file writes: a crash never leaves a half-written file behind.

Every writer goes through a temporary file in the destination directory followed by
``os.replace``, which is atomic on POSIX filesystems (same directory, same filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, naming the file in the error if it is malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete or repair it.") from exc


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk.

    Appends are not atomic, but a torn last line is detected and dropped by ``read_jsonl``,
    and resumed runs truncate metrics past their checkpoint (see ``truncate_jsonl``).
    """
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file, ignoring a torn (partially written) final line."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    lines = p.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a kill mid-append; everything before it is intact
                break
            raise
    return rows


def truncate_jsonl(path: str | os.PathLike[str], max_step: int) -> None:
    """Keep only records with ``step <= max_step`` (used when resuming from a checkpoint)."""
    p = Path(path)
    if not p.exists():
        return
    rows = [r for r in read_jsonl(p) if r.get("step", 0) <= max_step]
    write_text(p, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def plain(cfg: Any) -> dict[str, Any]:
    """A config mapping as a plain ``dict`` (an OmegaConf node resolved, anything else copied).

    Why here: every layer (losses' option checks, the engine's model specs, evaluation, config
    validation) reads configs it may receive either way, and OmegaConf is imported only when the
    value is one of its nodes.
    """
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        assert isinstance(out, dict)
        return out
    return dict(cfg)
