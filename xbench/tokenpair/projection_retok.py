"""Builder internals for projection W: re-tokenization of one vocabulary by the other, top-K.

Split out of ``xbench.tokenpair.projection`` (``build_projection`` uses these); the rules they
implement are described in that module's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["VocabSide", "piece_triples", "retokenize", "top_k", "vocab_side"]


@dataclass
class VocabSide:
    """What the builder needs to know about one tokenizer (from ``canon.token_table``)."""

    tok: Any
    canon: list[str]
    special: np.ndarray  # (V,) bool: special tokens are mapped by role, never re-tokenized
    raw: list[bytes | None]  # true bytes of each non-special token
    kind: str  # "byte_level", "sentencepiece" or "plain"

    @property
    def size(self) -> int:
        return len(self.canon)


def vocab_side(tok: Any) -> VocabSide:
    """The :class:`VocabSide` of a fast tokenizer (canonical strings, specials, true bytes)."""
    from xbench.tokenpair.canon import token_table

    if not hasattr(tok, "backend_tokenizer"):
        raise ValueError(
            f"Tokenizer {type(tok).__name__} has no backend_tokenizer: load a fast "
            "(tokenizers-backed) tokenizer, e.g. via xbench.assets.load_tokenizer."
        )
    table = token_table(tok)
    special = np.asarray(table.special, dtype=bool)
    return VocabSide(tok, table.canonical, special, table.raw_bytes, table.kind)


def _encoder(side: VocabSide) -> Any:
    """The backend tokenizer without truncation/padding (both would corrupt re-tokenization)."""
    backend = side.tok.backend_tokenizer
    if backend.truncation is None and backend.padding is None:
        return backend
    from tokenizers import Tokenizer

    clean = Tokenizer.from_str(backend.to_str())
    clean.no_truncation()
    clean.no_padding()
    return clean


def retokenize(src: VocabSide, dst: VocabSide, skip: np.ndarray) -> list[list[int]]:
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
    # One vocabulary dict for all fragments: get_vocab() rebuilds it (262k entries for Gemma-3)
    # on every call.
    vocab = dst.tok.get_vocab() if byte_ids and dst.kind == "sentencepiece" else {}
    for i in byte_ids:
        out[i] = _bytes_pieces(src.raw[i], dst, vocab)
    return out


def _bytes_pieces(data: bytes, dst: VocabSide, vocab: dict[str, int]) -> list[int]:
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
        ids = [vocab.get(f"<0x{b:02X}>") for b in data]
        return [] if None in ids else ids
    return []


def piece_triples(pieces: list[list[int]], piece_w: np.ndarray) -> tuple[np.ndarray, ...]:
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


def top_k(
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
