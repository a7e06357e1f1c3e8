"""Projection matrix W: maps student-token probability mass onto teacher tokens.

W has one row per student token and at most K ("projection rank") non-zero teacher columns per
row, stored as two dense ``(V_S, K)`` tensors (indices, weights); it is never materialized as a
``V_S x V_T`` matrix (128k x 152k fp32 would be ~78 GB). Rules (X-Token paper, "Projection W"):

1. Canonical exact match (``canonical_vocab`` strings equal): ``W[s, t] = 1`` and the row holds
   nothing else. Special tokens are canonicalized to ``<|role:NAME|>`` so this step also maps
   them by role (BOS to BOS, EOS to EOS, ...).
2. Otherwise the student token's text is re-tokenized by the teacher (no special tokens added)
   into ``t_0 .. t_{l-1}`` and ``W[s, t_i] += first_weight * decay**i`` for ``i < max_pieces``.
3. Optional reverse pass: every teacher token's text is re-tokenized by the student into
   ``s_0 .. s_{m-1}`` and ``W[s_i, t] += first_weight * decay**i``; exact and special rows skip it.
4. Keep the K largest entries per row (ties: lower teacher id first), renormalize to sum 1.

Decisions where the paper is silent, recorded in ``meta["rules"]``:

- A teacher id repeated within one row's pieces ("000" -> "0","0","0") gets the *sum* of its
  decayed weights, so W is the sum of the rules' contributions, like the reverse pass's "add".
- The reverse pass is off by default: the paper lists it as optional and its worked example and
  K = 4 are forward-only; it is available as ``reverse_pass=True``.
- Empty rows (all weights 0, indices 0) are student tokens that map nowhere: special tokens with
  no teacher token of the same role (Llama-3's reserved tokens, BOS against a teacher without
  one), tokens whose text is empty, tokens the teacher cannot spell (bytes missing from its
  vocabulary: SmolLM2 lacks 0xC0 and some control bytes), and padded LM-head rows. Their
  student mass leaves P-KL's projected distribution; ``meta["stats"]["empty_rows"]`` counts them.
- Byte-level tokens that are a fragment of a UTF-8 character (not decodable on their own) are
  re-tokenized on raw bytes by the teacher's byte-level BPE model, not via the text "\\ufffd"
  (which would map them all onto the replacement character's tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

__all__ = [
    "Projection",
    "ProjectionConfig",
    "build_projection",
    "exact_common_pairs",
    "load_or_build",
    "relaxed_common_pairs",
    "to_sparse",
    "tokenizer_fingerprint",
]

FORMAT = "xbench.projection/1"
_TENSORS = "projection.safetensors"
_META = "meta.json"


@dataclass(frozen=True)
class ProjectionConfig:
    """String rules for building W; defaults are the paper's.

    Attributes:
        rank: K, the number of teacher tokens kept per student row ("projection rank").
        max_pieces: At most this many teacher pieces of a re-tokenized student token get weight.
        first_weight: Weight of the first piece (0.9 in the paper).
        decay: Factor between consecutive pieces (0.1): piece i gets first_weight * decay**i.
        reverse_pass: Also add teacher-token re-tokenizations into student rows (paper: optional).
    """

    rank: int = 4
    max_pieces: int = 4
    first_weight: float = 0.9
    decay: float = 0.1
    reverse_pass: bool = False

    def __post_init__(self) -> None:
        for name in ("rank", "max_pieces"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ProjectionConfig.{name}={value!r}: set it to an integer >= 1.")
        if not (isinstance(self.first_weight, int | float) and self.first_weight > 0):
            raise ValueError(
                f"ProjectionConfig.first_weight={self.first_weight!r}: set it to a number > 0."
            )
        if not (isinstance(self.decay, int | float) and 0 < self.decay <= 1):
            raise ValueError(f"ProjectionConfig.decay={self.decay!r}: set it in (0, 1].")
        if not isinstance(self.reverse_pass, bool):
            raise ValueError(
                f"ProjectionConfig.reverse_pass={self.reverse_pass!r}: set it to true or false."
            )

    def rules(self) -> dict[str, Any]:
        """Return the full rule set (config plus fixed conventions) recorded in the artifact."""
        return {
            **dataclasses.asdict(self),
            "exact_match": "canonical_vocab",
            "duplicate_pieces": "sum",
            "special_tokens": "role (canonical <|role:NAME|>), else empty row",
            "partial_utf8": "raw bytes through the other side's byte-level BPE",
            "topk_ties": "lower teacher id first",
        }


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

    def learnable_values(self) -> torch.Tensor:
        """Return a fresh float32 ``(V_S, K)`` copy of the weights, e.g. for ``nn.Parameter``.

        P-KL learns the non-zero values with the student while the pattern (``indices`` and
        ``slot_mask``) stays fixed; pass the parameter to ``to_sparse(..., weights=param)``.
        """
        return self.weights.detach().clone().float().contiguous()

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
        meta = json.loads((src / _META).read_text("utf-8"))
        arrays = load_file(str(src / _TENSORS))
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


@dataclass
class _Side:
    """What the builder needs to know about one tokenizer (from ``canon.token_table``)."""

    tok: Any
    canon: list[str]
    special: np.ndarray  # (V,) bool: special tokens are mapped by role, never re-tokenized
    raw: list[bytes | None]  # true bytes of each non-special token
    kind: str  # "byte_level", "sentencepiece" or "plain"

    @property
    def size(self) -> int:
        return len(self.canon)


def _side(tok: Any) -> _Side:
    from xbench.tokenpair.canon import token_table

    if not hasattr(tok, "backend_tokenizer"):
        raise ValueError(
            f"Tokenizer {type(tok).__name__} has no backend_tokenizer: load a fast "
            "(tokenizers-backed) tokenizer, e.g. via xbench.assets.load_tokenizer."
        )
    table = token_table(tok)
    special = np.asarray(table.special, dtype=bool)
    return _Side(tok, table.canonical, special, table.raw_bytes, table.kind)


def _encoder(side: _Side) -> Any:
    """The backend tokenizer without truncation/padding (both would corrupt re-tokenization)."""
    backend = side.tok.backend_tokenizer
    if backend.truncation is None and backend.padding is None:
        return backend
    from tokenizers import Tokenizer

    clean = Tokenizer.from_str(backend.to_str())
    clean.no_truncation()
    clean.no_padding()
    return clean


def _retokenize(src: _Side, dst: _Side, skip: np.ndarray) -> list[list[int]]:
    """Re-tokenize every source token not in ``skip`` with the destination tokenizer.

    Returns one list of destination ids per source id (empty for skipped/special/empty tokens).
    """
    out: list[list[int]] = [[] for _ in range(src.size)]
    text_ids: list[int] = []
    texts: list[str] = []
    byte_ids: list[int] = []
    for i in range(src.size):
        if skip[i] or src.special[i] or not src.canon[i]:
            continue
        raw = src.raw[i]
        if raw is not None:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                byte_ids.append(i)
                continue
        text_ids.append(i)
        texts.append(src.canon[i])
    # One batched call into the Rust tokenizer: the whole vocabulary in a few seconds.
    encodings = _encoder(dst).encode_batch_fast(texts, add_special_tokens=False)
    for i, enc in zip(text_ids, encodings, strict=True):
        out[i] = [t for t in enc.ids if not dst.special[t]]
    for i in byte_ids:
        out[i] = _bytes_pieces(src.raw[i], dst)
    return out


def _bytes_pieces(data: bytes, dst: _Side) -> list[int]:
    """Destination pieces for a UTF-8 fragment (bytes with no text of their own).

    Byte-level BPE runs its merges on the fragment's byte string; SentencePiece uses its
    ``<0xHH>`` byte-fallback tokens; other vocabularies get no pieces (an empty row).
    """
    from xbench.tokenpair.canon import bytes_to_unicode

    if dst.kind == "byte_level":
        table = bytes_to_unicode()
        model = dst.tok.backend_tokenizer.model
        return [t.id for t in model.tokenize("".join(table[b] for b in data))]
    if dst.kind == "sentencepiece":
        vocab = dst.tok.get_vocab()
        ids = [vocab.get(f"<0x{b:02X}>") for b in data]
        return [] if None in ids else ids
    return []


# --------------------------------------------------------------------------- builder


def build_projection(
    student_tok: Any,
    teacher_tok: Any,
    cfg: ProjectionConfig | None = None,
) -> Projection:
    """Build W from string rules (module docstring) for a student/teacher tokenizer pair.

    ``V_S`` / ``V_T`` are the tokenizer sizes; use ``Projection.resized`` (or ``load`` /
    ``load_or_build`` with head sizes) for padded LM heads.

    Args:
        student_tok: Student fast tokenizer (rows of W).
        teacher_tok: Teacher fast tokenizer (columns of W).
        cfg: Rules; ``ProjectionConfig()`` (paper defaults) when None.

    Returns:
        The projection, deterministic: same tokenizers and rules give bit-identical tensors.
    """
    cfg = ProjectionConfig() if cfg is None else cfg
    if not isinstance(cfg, ProjectionConfig):
        raise ValueError(f"cfg is a {type(cfg).__name__}: pass a ProjectionConfig.")
    s, t = _side(student_tok), _side(teacher_tok)

    # Rule 1: canonical exact match (first teacher id wins if two share a canonical string).
    teacher_by_canon: dict[str, int] = {}
    for j, c in enumerate(t.canon):
        if c:
            teacher_by_canon.setdefault(c, j)
    exact = np.full(s.size, -1, dtype=np.int64)
    for i, c in enumerate(s.canon):
        exact[i] = teacher_by_canon.get(c, -1) if c else -1
    is_exact = exact >= 0

    # Rule 2 (+3): decayed weights of re-tokenization pieces, as COO triples.
    piece_w = cfg.first_weight * cfg.decay ** np.arange(cfg.max_pieces, dtype=np.float64)
    rows, cols, vals = [np.flatnonzero(is_exact)], [exact[is_exact]], [np.ones(is_exact.sum())]
    forward = _retokenize(s, t, skip=is_exact)
    r, c, v = _triples(forward, piece_w)
    rows.append(r)
    cols.append(c)
    vals.append(v)
    n_reverse = 0
    if cfg.reverse_pass:
        backward = _retokenize(t, s, skip=np.zeros(t.size, dtype=bool))
        tc, sr, v = _triples(backward, piece_w)  # (teacher source, student piece, weight)
        keep = ~(is_exact[sr] | s.special[sr])  # exact rows hold nothing else
        rows.append(sr[keep])
        cols.append(tc[keep])
        vals.append(v[keep])
        n_reverse = int(keep.sum())
    indices, weights = _top_k(
        np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), s.size, t.size, cfg.rank
    )

    n_pieces = np.array([len(p) for p in forward])
    empty = weights[:, 0] == 0
    meta: dict[str, Any] = {
        "format": FORMAT,
        "V_S": s.size,
        "V_T": t.size,
        "K": cfg.rank,
        "student": {"fingerprint": tokenizer_fingerprint(student_tok), "vocab_size": s.size},
        "teacher": {"fingerprint": tokenizer_fingerprint(teacher_tok), "vocab_size": t.size},
        "rules": cfg.rules(),
        "stats": {
            "exact_rows": int(is_exact.sum()),
            "special_rows_by_role": int((is_exact & s.special).sum()),
            "retokenized_rows": int(((n_pieces > 0) & ~is_exact).sum()),
            "rows_over_max_pieces": int((n_pieces > cfg.max_pieces).sum()),
            "reverse_entries": n_reverse,
            "empty_rows": int(empty.sum()),
            "empty_special_rows": int((empty & s.special).sum()),
            "padded_head_rows": 0,
            "nnz": int((weights > 0).sum()),
        },
        "xbench_version": _xbench_version(),
    }
    proj = Projection(torch.from_numpy(indices), torch.from_numpy(weights), meta)
    proj.meta["content_hash"] = proj.content_hash
    return proj


def _triples(pieces: list[list[int]], piece_w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flatten per-source piece lists into (source, piece, weight) arrays, capped at max_pieces."""
    cap = len(piece_w)
    lengths = np.fromiter((min(len(p), cap) for p in pieces), dtype=np.int64, count=len(pieces))
    flat = np.fromiter(
        (t for p in pieces for t in p[:cap]), dtype=np.int64, count=int(lengths.sum())
    )
    src = np.repeat(np.arange(len(pieces), dtype=np.int64), lengths)
    # Position of each piece inside its source token: 0, 1, .. restarting at every source.
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(len(flat), dtype=np.int64) - starts
    return src, flat, piece_w[pos]


def _top_k(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sum duplicate (row, col) entries, keep the K largest per row, renormalize rows to 1."""
    key = rows * np.int64(n_cols) + cols
    uniq, inverse = np.unique(key, return_inverse=True)
    summed = np.bincount(inverse, weights=vals, minlength=len(uniq))
    r, c = uniq // n_cols, uniq % n_cols
    order = np.lexsort((c, -summed, r))  # by row, then weight descending, then teacher id
    r, c, w = r[order], c[order], summed[order]
    first = np.searchsorted(r, r, side="left")
    rank = np.arange(len(r)) - first
    keep = rank < k
    r, c, w, rank = r[keep], c[keep], w[keep], rank[keep]
    indices = np.zeros((n_rows, k), dtype=np.int64)
    weights = np.zeros((n_rows, k), dtype=np.float64)
    indices[r, rank] = c
    weights[r, rank] = w
    total = weights.sum(axis=1, keepdims=True)
    np.divide(weights, total, out=weights, where=total > 0)
    return indices, weights.astype(np.float32)


def _xbench_version() -> str:
    # The editable install can expose ``xbench`` as a namespace package (no __version__) when
    # run from outside the repo, so fall back to the installed distribution's metadata.
    import importlib.metadata

    import xbench

    version = getattr(xbench, "__version__", None)
    return version or importlib.metadata.version("xbench")


def _content_hash(indices: np.ndarray, weights: np.ndarray, meta: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(weights, dtype="<f4").tobytes())
    defining = {
        key: meta.get(key) for key in ("format", "V_S", "V_T", "K", "rules", "student", "teacher")
    }
    h.update(json.dumps(defining, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


# --------------------------------------------------------------------------- cache


def load_or_build(
    student_tok: Any,
    teacher_tok: Any,
    cfg: ProjectionConfig | None = None,
    *,
    student_head_size: int | None = None,
    teacher_head_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Projection:
    """Return W from ``<cache>/projections/<key>``, building and caching it on a miss.

    The key hashes the inputs (both tokenizer fingerprints, the rules, the artifact format), so
    it is known before building; the artifact inside carries its content hash, checked on load.

    Args:
        student_tok: Student fast tokenizer.
        teacher_tok: Teacher fast tokenizer.
        cfg: Rules (paper defaults when None).
        student_head_size: Student LM-head rows (default: tokenizer size).
        teacher_head_size: Teacher LM-head rows (default: tokenizer size).
        cache_dir: Cache root; default ``$XBENCH_CACHE`` or ``~/.cache/xbench``.
    """
    from xbench.assets import cache_dir as default_cache

    cfg = ProjectionConfig() if cfg is None else cfg
    key_src = {
        "format": FORMAT,
        "student": tokenizer_fingerprint(student_tok),
        "teacher": tokenizer_fingerprint(teacher_tok),
        "rules": cfg.rules(),
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir or default_cache()) / "projections" / key
    try:
        proj = Projection.load(path, student_tok=student_tok, teacher_tok=teacher_tok)
    except (FileNotFoundError, ValueError):  # miss or corrupt entry: rebuild over it
        proj = build_projection(student_tok, teacher_tok, cfg)
        proj.save(path)
    return proj.resized(
        proj.meta["V_S"] if student_head_size is None else student_head_size,
        proj.meta["V_T"] if teacher_head_size is None else teacher_head_size,
    )


# --------------------------------------------------------------------------- helpers for losses


def to_sparse(
    proj: Projection, V_T: int | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """W as a sparse CSR tensor ``(V_S, V_T)``; padding slots are dropped.

    Args:
        proj: The projection.
        V_T: Number of columns (teacher head size); default ``proj.meta["V_T"]``.
        weights: Optional ``(V_S, K)`` values to use instead of ``proj.weights`` (e.g. a learnable
            parameter; gradients flow through it). The pattern is always ``proj.slot_mask``.
    """
    n_cols = int(proj.meta["V_T"] if V_T is None else V_T)
    if proj.indices.numel() and int(proj.indices.max()) >= n_cols:
        raise ValueError(
            f"V_T={n_cols} is smaller than the largest teacher id in W "
            f"({int(proj.indices.max())}); pass the teacher's head size."
        )
    values = proj.weights if weights is None else weights
    if values.shape != proj.weights.shape:
        raise ValueError(
            f"weights has shape {tuple(values.shape)}; it must be {tuple(proj.weights.shape)}."
        )
    mask = proj.slot_mask
    # CSR wants column ids ascending within a row; slots are stored by weight, so reorder.
    order = torch.argsort(torch.where(mask, proj.indices, n_cols), dim=1, stable=True)
    mask = mask.gather(1, order)
    cols = proj.indices.gather(1, order)[mask]
    vals = values.gather(1, order)[mask]
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(mask.sum(dim=1), dim=0)
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # Valid by construction (crow from counts, cols sorted per row): skip the O(nnz) check.
        return torch.sparse_csr_tensor(
            crow, cols, vals, size=(mask.shape[0], n_cols), check_invariants=False
        )


def relaxed_common_pairs(
    proj: Projection, threshold: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """H-KL's relaxed common set: student rows whose largest W weight is >= ``threshold``.

    Each such row is paired with the teacher token holding that weight. When several rows pick
    the same teacher token, the highest weight wins, then the lowest student id, so the pairs are
    1-to-1.

    Returns:
        ``(student_ids, teacher_ids)``, int64, sorted by student id.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r}: set it in (0, 1].")
    top_w, slot = proj.weights.max(dim=1)
    top_t = proj.indices.gather(1, slot[:, None]).squeeze(1)
    student = torch.nonzero(top_w >= threshold).squeeze(1)
    w, teacher = top_w[student].numpy(), top_t[student].numpy()
    order = np.lexsort((student.numpy(), -w.astype(np.float64), teacher))
    teacher_sorted = teacher[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = teacher_sorted[1:] != teacher_sorted[:-1]
    winners = np.sort(order[first])
    return student[torch.from_numpy(winners)], torch.from_numpy(teacher[winners]).long()


def exact_common_pairs(
    student_tok: Any,
    teacher_tok: Any,
    semantics: Literal["canonical", "trl"] = "canonical",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GOLD's 1-to-1 common vocabulary.

    Args:
        student_tok: Student tokenizer.
        teacher_tok: Teacher tokenizer.
        semantics: ``"trl"`` = raw ``get_vocab()`` string equality as TRL's GOLD does (so Llama's
            ``Ġthe`` and a SentencePiece ``▁the`` never match); ``"canonical"`` = equality of
            ``canonical_vocab`` strings (space/newline markers unified, specials by role). A
            canonical string shared by several ids on one side pairs its lowest id.

    Returns:
        ``(student_ids, teacher_ids)``, int64, sorted by student id.
    """
    if semantics == "trl":
        sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
        pairs = sorted((i, tv[tok]) for tok, i in sv.items() if tok in tv)
    elif semantics == "canonical":
        from xbench.tokenpair.canon import canonical_vocab

        teacher: dict[str, int] = {}
        for j, c in enumerate(canonical_vocab(teacher_tok)):
            if c:
                teacher.setdefault(c, j)
        seen: set[str] = set()
        pairs = []
        for i, c in enumerate(canonical_vocab(student_tok)):
            if c and c in teacher and c not in seen:
                seen.add(c)
                pairs.append((i, teacher[c]))
    else:
        raise ValueError(f"semantics={semantics!r}: use 'canonical' or 'trl'.")
    arr = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    return arr[:, 0].contiguous(), arr[:, 1].contiguous()
