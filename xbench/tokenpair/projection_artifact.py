"""W as an object and on disk: the :class:`Projection` dataclass, its content hash, tokenizer
fingerprints, the atomic save and the checked load.

The low end of the projection modules: it imports nothing else of ``xbench.tokenpair``;
``projection_pairs`` (loss-side helpers) and ``projection`` (the builder and the cache, which
re-exports ``Projection`` and ``tokenizer_fingerprint``) build on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

__all__ = ["FORMAT", "Projection", "tokenizer_fingerprint"]

FORMAT = "xbench.projection/1"
_TENSORS = "projection.safetensors"
_META = "meta.json"


@dataclass
class Projection:
    """Sparse W in fixed-rank form (see ``docs/contracts.md``).

    Attributes:
        indices: ``(V_S, K)`` int64 teacher ids; padding slots hold 0.
        weights: ``(V_S, K)`` float32, sorted descending per row; a non-empty row sums to 1,
            padding slots and empty rows hold 0.
        meta: ``V_S`` / ``V_T`` (model head sizes), ``K``, tokenizer fingerprints and sizes,
            rules, stats, xbench version, ``content_hash``.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """sha256 over the tensors' canonical bytes and the meta fields that define W."""
        return _content_hash(self.indices.numpy(), self.weights.numpy(), self.meta)

    @property
    def slot_mask(self) -> torch.Tensor:
        """``(V_S, K)`` bool: slots that hold an entry; the fixed sparsity pattern of W."""
        return self.weights > 0

    def resized(self, student_head_size: int, teacher_head_size: int) -> Projection:
        """Return W for LM heads padded beyond the tokenizers (extra rows map nowhere).

        Args:
            student_head_size: Rows of the student's LM head (>= student tokenizer size).
            teacher_head_size: Rows of the teacher's LM head (>= teacher tokenizer size).

        Raises:
            ValueError: A head is smaller than its tokenizer.
        """
        for side, size in (("student", student_head_size), ("teacher", teacher_head_size)):
            vocab = self.meta[side]["vocab_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < vocab:
                raise ValueError(
                    f"{side}_head_size={size!r} is smaller than the {side} tokenizer "
                    f"({vocab} tokens): pass the model's real output-embedding size, or the "
                    f"tokenizer that belongs to the {side} model."
                )
        extra = student_head_size - self.indices.shape[0]
        if extra < 0:  # shrinking back to a smaller (still >= vocab) padded head
            indices, weights = self.indices[:student_head_size], self.weights[:student_head_size]
        else:
            k = self.indices.shape[1]
            indices = torch.cat([self.indices, torch.zeros(extra, k, dtype=torch.int64)])
            weights = torch.cat([self.weights, torch.zeros(extra, k, dtype=torch.float32)])
        meta = {**self.meta, "V_S": student_head_size, "V_T": teacher_head_size}
        padded = student_head_size - self.meta["student"]["vocab_size"]
        meta["stats"] = {**meta["stats"], "padded_head_rows": padded}
        proj = Projection(indices.contiguous(), weights.contiguous(), meta)
        proj.meta["content_hash"] = proj.content_hash
        return proj

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact directory ``path`` atomically (safetensors + ``meta.json``).

        The directory is assembled under a temporary name and renamed into place, so readers
        see either nothing, the old artifact, or the complete new one.
        """
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "content_hash": self.content_hash}
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            tensors = {"indices": self.indices.numpy(), "weights": self.weights.numpy()}
            save_file(tensors, str(tmp / _TENSORS), metadata={"content_hash": meta["content_hash"]})
            # Size and hash of the file as written: checked before the bytes are parsed, so a
            # truncated or bit-flipped file is caught even where safetensors would choke on it.
            meta["file"] = {
                "size": (tmp / _TENSORS).stat().st_size,
                "sha256": _sha256(tmp / _TENSORS),
            }
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

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        student_tok: Any = None,
        teacher_tok: Any = None,
        student_head_size: int | None = None,
        teacher_head_size: int | None = None,
    ) -> Projection:
        """Read an artifact, check its integrity and, when given, the tokenizers and heads.

        Args:
            path: Artifact directory written by ``save``.
            student_tok: If given, its fingerprint must match the one W was built from.
            teacher_tok: Same for the teacher.
            student_head_size: Student LM-head rows; padded heads get empty extra rows.
            teacher_head_size: Teacher LM-head rows; must be >= the teacher tokenizer size.

        Raises:
            FileNotFoundError: The artifact is missing.
            ValueError: The artifact is corrupt, or a tokenizer / head size does not fit.
        """
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
