"""Artifact I/O for projection W: fingerprints, content hash, atomic save, checked load.

Split out of ``xbench.tokenpair.projection``, which re-exports the public names
(``FORMAT``, ``tokenizer_fingerprint``) and whose ``Projection.save`` / ``Projection.load``
delegate here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

if TYPE_CHECKING:
    from xbench.tokenpair.projection import Projection

__all__ = ["FORMAT", "load_projection", "save_projection", "tokenizer_fingerprint"]

FORMAT = "xbench.projection/1"
_TENSORS = "projection.safetensors"
_META = "meta.json"


def save_projection(proj: Projection, path: str | os.PathLike[str]) -> Path:
    """Write ``proj`` to the artifact directory ``path`` atomically; see ``Projection.save``."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = {**proj.meta, "content_hash": proj.content_hash}
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tensors = {"indices": proj.indices.numpy(), "weights": proj.weights.numpy()}
        save_file(tensors, str(tmp / _TENSORS), metadata={"content_hash": meta["content_hash"]})
        # Size and hash of the file as written: checked before the bytes are parsed, so a
        # truncated or bit-flipped file is caught even where safetensors would choke on it.
        meta["file"] = {"size": (tmp / _TENSORS).stat().st_size, "sha256": _sha256(tmp / _TENSORS)}
        (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", "utf-8")
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_projection(
    cls: type[Projection],
    path: str | os.PathLike[str],
    *,
    student_tok: Any = None,
    teacher_tok: Any = None,
    student_head_size: int | None = None,
    teacher_head_size: int | None = None,
) -> Projection:
    """Read an artifact as a ``cls`` and check it; see ``Projection.load``."""
    src = Path(path)
    if not (src / _TENSORS).is_file() or not (src / _META).is_file():
        raise FileNotFoundError(
            f"No projection artifact at {src} (expected {_TENSORS} and {_META}); build it "
            "with xbench.tokenpair.projection.load_or_build or fix the path."
        )
    tensors = src / _TENSORS
    try:
        meta = json.loads((src / _META).read_text("utf-8"))
    except ValueError as exc:
        raise ValueError(f"{src / _META} is not valid JSON ({exc}); rebuild W.") from exc
    expected = meta.get("file") or {}
    if "size" in expected and tensors.stat().st_size != expected["size"]:
        raise ValueError(
            f"{tensors} has {tensors.stat().st_size} bytes, its meta.json says "
            f"{expected['size']} (truncated or overwritten); rebuild W."
        )
    if "sha256" in expected and _sha256(tensors) != expected["sha256"]:
        raise ValueError(f"{tensors} fails its sha256 check (corrupted on disk); rebuild W.")
    try:
        arrays = load_file(str(tensors))
    except Exception as exc:  # safetensors raises SafetensorError on a torn header
        raise ValueError(
            f"{tensors} is not a readable safetensors file ({exc}); rebuild W."
        ) from exc
    if set(arrays) != {"indices", "weights"}:
        raise ValueError(f"{tensors} lacks the indices/weights tensors; rebuild W.")
    proj = cls(torch.from_numpy(arrays["indices"]), torch.from_numpy(arrays["weights"]), meta)
    if meta.get("format") != FORMAT or proj.content_hash != meta.get("content_hash"):
        raise ValueError(
            f"Projection artifact {src} fails its content-hash check (format "
            f"{meta.get('format')!r}); delete the directory and rebuild W."
        )
    for side, tok in (("student", student_tok), ("teacher", teacher_tok)):
        if tok is not None and tokenizer_fingerprint(tok) != meta[side]["fingerprint"]:
            raise ValueError(
                f"meta.{side}.fingerprint of {src} does not match the given {side} "
                f"tokenizer (vocab, merges or specials differ): rebuild W for this tokenizer "
                f"pair (delete the cached artifact) or pass the {side} tokenizer W was built "
                "from."
            )
    if student_head_size is not None or teacher_head_size is not None:
        proj = proj.resized(
            meta["V_S"] if student_head_size is None else student_head_size,
            meta["V_T"] if teacher_head_size is None else teacher_head_size,
        )
    return proj


# --------------------------------------------------------------------------- tokenizer facts


def _tokenizer_json(tok: Any) -> dict[str, Any]:
    """Parsed ``tokenizer.json`` of a fast tokenizer's backend."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"Tokenizer {type(tok).__name__} has no backend_tokenizer: load a fast "
            "(tokenizers-backed) tokenizer, e.g. via xbench.assets.load_tokenizer."
        )
    return json.loads(backend.to_str())


# id(tokenizer) -> (tokenizer, size, fingerprint); the object is kept so its id is not reused.
_FINGERPRINTS: dict[int, tuple[Any, int, str]] = {}


def tokenizer_fingerprint(tok: Any) -> str:
    """Hash of what determines W on one side: vocabulary, merges and added/special tokens.

    Runtime state (truncation, padding) and the file layout are excluded, so the same tokenizer
    saved and reloaded keeps its fingerprint. Cached per tokenizer object (and size, so adding
    tokens invalidates it): hashing a 150k vocabulary costs seconds.
    """
    hit = _FINGERPRINTS.get(id(tok))
    if hit is not None and hit[0] is tok and hit[1] == len(tok):
        return hit[2]
    spec = _tokenizer_json(tok)
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # BPE/WordPiece: order by id, independent of JSON key order
        vocab = sorted(vocab.items(), key=lambda kv: kv[1])
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges", [])]
    added = sorted(
        (a["id"], a["content"], bool(a.get("special"))) for a in spec.get("added_tokens", [])
    )
    blob = json.dumps(
        {"type": model.get("type"), "vocab": vocab, "merges": merges, "added": added},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()
    _FINGERPRINTS[id(tok)] = (tok, len(tok), digest)
    return digest


# --------------------------------------------------------------------------- content hash


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _content_hash(indices: np.ndarray, weights: np.ndarray, meta: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(weights, dtype="<f4").tobytes())
    defining = {
        key: meta.get(key) for key in ("format", "V_S", "V_T", "K", "rules", "student", "teacher")
    }
    h.update(json.dumps(defining, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()
