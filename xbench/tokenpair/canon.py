"""Canonical token strings: one surface form per token across tokenizer families.

Alignment and the projection W compare tokens of two vocabularies by string. Raw vocabulary strings
are not comparable: byte-level BPE stores a space as ``Ġ`` and a newline as ``Ċ`` (GPT-2's
bytes<->unicode table), SentencePiece stores a space as ``▁`` and unknown bytes as ``<0xHH>``, and
special tokens have family-specific names. The canonical form is:

- the token's true text: byte-level strings are mapped back to bytes and decoded as UTF-8;
  SentencePiece ``▁`` becomes a literal ``" "``; so ``Ġ``, ``▁`` and a literal leading space all end
  up as ``" "``, and ``Ċ`` / ``<0x0A>`` end up as ``"\\n"``;
- bytes that do not form a complete UTF-8 character on their own (a byte-level token holding half
  of a CJK character, a SentencePiece ``<0xE4>``) are written ``<0xHH>`` (upper-case hex) in *both*
  families, and adjacent complete sequences are merged back into characters;
- special tokens become ``<|role:NAME|>``: well-known chat markers by meaning (``<|im_start|>`` and
  ``<|start_header_id|>`` are both ``<|role:turn_start|>``), then bos / eos / unk / pad by the
  tokenizer's attributes, else the bare name (``<|vision_pad|>`` -> ``<|role:vision_pad|>``).

The table is deterministic (a pure function of the tokenizer's files) and the string rules are
idempotent (re-encoding a canonical string's bytes gives the same string).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "ROLE_PREFIX",
    "TokenTable",
    "bytes_to_text",
    "bytes_to_unicode",
    "canonical_vocab",
    "decode_ids",
    "token_table",
]

ROLE_PREFIX = "<|role:"

# Well-known special-token contents and their cross-family role. Meaning first: SmolLM2-Instruct
# declares <|im_start|> as its BOS, but it must still match Qwen's <|im_start|>.
_KNOWN_ROLES: dict[str, str] = {
    "<|begin_of_text|>": "bos",
    "<s>": "bos",
    "<|startoftext|>": "bos",
    "<bos>": "bos",
    "<|end_of_text|>": "eos",
    "</s>": "eos",
    "<|endoftext|>": "eos",
    "<eos>": "eos",
    "<unk>": "unk",
    "<pad>": "pad",
    "<|finetune_right_pad_id|>": "pad",
    "<|im_start|>": "turn_start",
    "<|start_header_id|>": "turn_start",
    "<start_of_turn>": "turn_start",
    "<|im_end|>": "turn_end",
    "<|eot_id|>": "turn_end",
    "<end_of_turn>": "turn_end",
    "<|end|>": "turn_end",
    "<|end_header_id|>": "header_end",
    "<|eom_id|>": "message_end",
    "<|python_tag|>": "tool_call",
    "<|tool_call|>": "tool_call",
    "<|fim_prefix|>": "fim_prefix",
    "<fim_prefix>": "fim_prefix",
    "<|fim_middle|>": "fim_middle",
    "<fim_middle>": "fim_middle",
    "<|fim_suffix|>": "fim_suffix",
    "<fim_suffix>": "fim_suffix",
    "<|fim_pad|>": "fim_pad",
    "<fim_pad>": "fim_pad",
    "<|repo_name|>": "repo_name",
    "<repo_name>": "repo_name",
    "<|file_sep|>": "file_sep",
    "<file_sep>": "file_sep",
}
# Attribute roles in precedence order: when pad == eos the shared token is "eos" (one id, one name).
_ATTR_ROLES = ("bos", "eos", "unk", "pad")

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-F]{2})>")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2's byte -> printable-unicode table used by byte-level BPE vocabularies.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the other
    68 bytes map to ``chr(256 + n)`` in byte order, so space (0x20) is ``Ġ`` (U+0120) and newline
    (0x0A) is ``Ċ`` (U+010A). A public variant offset this block by 3 and merged CJK and emoji
    bytes into wrong characters; the tests pin ``Ġ`` and ``Ċ`` against it.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@lru_cache(maxsize=1)
def _latin1_translation() -> dict[int, int]:
    """``str.translate`` table taking byte-level characters to the Latin-1 char of their byte."""
    return {ord(u): b for b, u in bytes_to_unicode().items()}


def _hex_errors(err: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler writing each undecodable byte as ``<0xHH>``."""
    bad = err.object[err.start : err.end]
    return "".join(f"<0x{b:02X}>" for b in bad), err.end


codecs.register_error("xbench_hexbyte", _hex_errors)


def bytes_to_text(data: bytes) -> str:
    """Decode UTF-8, writing bytes that are not part of a complete character as ``<0xHH>``."""
    return data.decode("utf-8", errors="xbench_hexbyte")


def _kind(tokenizer) -> str:
    """Classify a fast tokenizer as ``"byte_level"``, ``"sentencepiece"`` or ``"plain"``."""
    backend = tokenizer.backend_tokenizer
    described = f"{backend.decoder!r} {backend.pre_tokenizer!r}"
    if "ByteLevel" in described:
        return "byte_level"
    if "Metaspace" in described or "▁" in described or "ByteFallback" in described:
        return "sentencepiece"
    return "plain"


def _special_ids(tokenizer) -> dict[int, str]:
    """Map special token id -> content (added tokens flagged special, plus declared specials)."""
    specials = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for tok_str, tok_id in zip(
        tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=False
    ):
        if tok_id is not None:
            specials.setdefault(int(tok_id), tok_str)
    return specials


def _role_name(content: str, attr_role: str | None) -> str:
    """Canonical ``<|role:NAME|>`` for one special token."""
    role = _KNOWN_ROLES.get(content) or attr_role
    if role is None:
        bare = content.strip("<>|").strip() or "special"
        role = _NAME_CHARS.sub("_", bare)
    return f"{ROLE_PREFIX}{role}|>"


@dataclass(frozen=True)
class TokenTable:
    """Per-id canonical strings and true bytes of one tokenizer.

    Attributes:
        canonical: Canonical string of each id (length ``len(tokenizer)``).
        raw_bytes: True bytes each id contributes to decoded text; ``None`` for special tokens
            (they contribute no text) and for ids missing from the vocabulary.
        special: Whether each id is a special token.
        kind: ``"byte_level"``, ``"sentencepiece"`` or ``"plain"``.
    """

    canonical: list[str]
    raw_bytes: list[bytes | None]
    special: list[bool]
    kind: str


# Keyed by id(tokenizer) with the object kept alive in the value, so a freed tokenizer's id cannot
# be reused for a stale entry. A handful of tokenizers per process, so no eviction.
_TABLES: dict[int, tuple[object, TokenTable]] = {}


def token_table(tokenizer) -> TokenTable:
    """Build (once per tokenizer object) the canonical strings and true bytes of every id.

    Args:
        tokenizer: A ``transformers`` fast tokenizer.

    Returns:
        The :class:`TokenTable`; about a second for a 150k vocabulary.

    Raises:
        TypeError: ``tokenizer`` is not a fast (``tokenizers``-backed) tokenizer.
    """
    hit = _TABLES.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise TypeError(
            f"tokenizer of type {type(tokenizer).__name__} has no backend_tokenizer; pass a fast "
            "tokenizer (e.g. from xbench.assets.load_tokenizer)."
        )
    table = _build_table(tokenizer)
    _TABLES[id(tokenizer)] = (tokenizer, table)
    return table


def _build_table(tokenizer) -> TokenTable:
    """Compute a :class:`TokenTable` (uncached)."""
    n = len(tokenizer)
    kind = _kind(tokenizer)
    specials = _special_ids(tokenizer)
    attr_role: dict[int, str] = {}
    for role in reversed(_ATTR_ROLES):  # reversed: earlier roles in the tuple win
        tid = getattr(tokenizer, f"{role}_token_id", None)
        if tid is not None:
            attr_role[int(tid)] = role
    # Non-special added tokens (Qwen3's <think>) are literal text, never byte-level encoded.
    literal_added = {
        i: t.content for i, t in tokenizer.added_tokens_decoder.items() if not t.special
    }
    raw: list[str | None] = [None] * n
    for piece, i in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items():
        if i < n:
            raw[i] = piece
    latin1 = _latin1_translation()

    canonical: list[str] = [""] * n
    raw_bytes: list[bytes | None] = [None] * n
    is_special = [False] * n
    for i in range(n):
        piece = raw[i]
        if i in specials:
            is_special[i] = True
            canonical[i] = _role_name(specials[i], attr_role.get(i))
            continue
        if piece is None:
            canonical[i] = f"{ROLE_PREFIX}unused|>"
            continue
        data = _piece_bytes(piece, kind, i in literal_added, latin1)
        raw_bytes[i] = data
        canonical[i] = bytes_to_text(data)
    return TokenTable(canonical=canonical, raw_bytes=raw_bytes, special=is_special, kind=kind)


def _piece_bytes(piece: str, kind: str, literal: bool, latin1: dict[int, int]) -> bytes:
    """True bytes of one vocabulary piece given the tokenizer family."""
    if literal:
        # Gemma-3's whitespace-run added tokens ("▁▁", ...) match text whose spaces its
        # normalizer turned into "▁": they spell spaces, like its vocabulary pieces.
        return (piece.replace("▁", " ") if kind == "sentencepiece" else piece).encode("utf-8")
    if kind == "byte_level":
        mapped = piece.translate(latin1)
        try:
            return mapped.encode("latin-1")
        except UnicodeEncodeError:
            # A piece outside the byte alphabet (a hand-added token): it is literal text.
            return piece.encode("utf-8")
    if kind == "sentencepiece":
        m = _BYTE_FALLBACK.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("▁", " ").encode("utf-8")
    # Plain vocabularies: unify the byte-level newline marker some converted vocabularies keep.
    return piece.replace("Ċ", "\n").replace("Ġ", " ").encode("utf-8")


def canonical_vocab(tokenizer) -> list[str]:
    """Return the canonical string of every token id of ``tokenizer``.

    Args:
        tokenizer: A ``transformers`` fast tokenizer.

    Returns:
        ``list[str]`` with ``len == len(tokenizer)``; index = token id. A copy, safe to mutate.
    """
    return list(token_table(tokenizer).canonical)


def decode_ids(tokenizer, ids) -> str:
    """Decode a sequence of ids by concatenating true bytes (specials contribute nothing).

    Multi-byte characters split across tokens are merged back, which per-token decoding cannot do.

    Args:
        tokenizer: A ``transformers`` fast tokenizer.
        ids: Iterable of token ids.

    Returns:
        The decoded text, with any incomplete trailing bytes as ``<0xHH>``.
    """
    table = token_table(tokenizer)
    return bytes_to_text(b"".join(table.raw_bytes[int(i)] or b"" for i in ids))
