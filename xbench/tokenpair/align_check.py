"""Cross-checks of the DP aligner against the offset aligner, for tests and the fuzz benchmark.

The offset aligner works from character offsets, so it knows where every token sits in the text;
the DP aligner works from ids alone. :func:`check_dp` aligns one text both ways and counts what
the DP gets wrong, using the offsets as the ground truth:

- *position errors*: a DP chunk whose two sides cover different text. The offset aligner's chunks
  are the finest segmentation both sides share, so a DP chunk is right when its student tokens
  and its teacher tokens lie in the same set of offset chunks (comparing character spans
  directly would flag normalizers, whose offsets for a composed character stop short);
- *dropped tokens*: a token in no DP chunk although it holds text (a text token, or a special
  written inside the text: the offset aligner puts both in a chunk);
- *disagreements*: a student token that both aligners put in an exact 1:1 chunk (valid, same
  canonical string on both sides), paired with different teacher tokens. The DP may also pair
  tokens the offset aligner cannot separate (identical byte fragments of one character share
  its offsets): counted as *dp_only_pairs*, and covered by the position check;
- *missed*: an offset exact 1:1 pair that the DP does not reproduce (coverage, not an error).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from xbench.tokenpair.align import TokenizerPairAligner
from xbench.tokenpair.canon import token_table
from xbench.tokenpair.types import SeqAlignment

__all__ = [
    "FUZZ_FRAGMENTS",
    "SPECIAL_MODES",
    "DpCheck",
    "check_dp",
    "exact_pairs",
    "mixed_texts",
    "set_special_mode",
    "spellable",
]


@dataclass
class DpCheck:
    """Counts from :func:`check_dp`, summed over texts with ``+=``."""

    texts: int = 0
    position_errors: int = 0
    dropped_tokens: int = 0
    disagreements: int = 0
    offset_exact_pairs: int = 0
    missed_exact_pairs: int = 0
    dp_only_pairs: int = 0

    def __iadd__(self, other: DpCheck) -> DpCheck:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def errors(self) -> int:
        """Position errors + dropped tokens + disagreements (what must be zero)."""
        return self.position_errors + self.dropped_tokens + self.disagreements


def exact_pairs(al: SeqAlignment, s_ids, t_ids, s_canon, t_canon) -> dict[int, int]:
    """Student index -> teacher index of every valid 1:1 chunk whose two tokens have the same
    canonical string."""
    pairs = {}
    s_of = {int(c): i for i, c in enumerate(al.student_chunk.tolist()) if c >= 0}
    t_of = {int(c): i for i, c in enumerate(al.teacher_chunk.tolist()) if c >= 0}
    for c in np.flatnonzero(al.one_to_one & al.valid).tolist():
        s, t = s_of[c], t_of[c]
        if s_canon[s_ids[s]] == t_canon[t_ids[t]]:
            pairs[s] = t
    return pairs


def _offset_chunks(dp_chunk: np.ndarray, off_chunk: np.ndarray) -> dict[int, set[int]]:
    """DP chunk id -> the offset-aligner chunks its tokens (on one side) fall in."""
    out: dict[int, set[int]] = {}
    for c, o in zip(dp_chunk.tolist(), off_chunk.tolist(), strict=True):
        if c >= 0:
            out.setdefault(c, set())
            if o >= 0:
                out[c].add(o)
    return out


def check_dp(aligner: TokenizerPairAligner, text: str) -> DpCheck:
    """Align ``text`` with both aligners and count the DP's errors (see the module docstring).

    Args:
        aligner: The tokenizer pair.
        text: The text both sides tokenize (with their post-processors' specials).

    Returns:
        The counts for this one text.
    """
    si, ti, so, to = aligner.encode([text])
    s_ids, t_ids, s_off, t_off = si[0].tolist(), ti[0].tolist(), so[0], to[0]
    s_tab = token_table(aligner.student_tokenizer)
    t_tab = token_table(aligner.teacher_tokenizer)
    off = aligner.align(si[0], ti[0], s_off, t_off, method="offset", texts=text)
    dp = aligner.align(si[0], ti[0], method="dp")
    out = DpCheck(texts=1)
    s_in = _offset_chunks(dp.student_chunk, off.student_chunk)
    t_in = _offset_chunks(dp.teacher_chunk, off.teacher_chunk)
    out.position_errors = sum(s_in.get(c) != t_in.get(c) for c in range(dp.num_chunks))
    for chunk, o in ((dp.student_chunk, s_off), (dp.teacher_chunk, t_off)):
        out.dropped_tokens += int(((chunk < 0) & (o[:, 1] > o[:, 0])).sum())
    a = exact_pairs(off, s_ids, t_ids, s_tab.canonical, t_tab.canonical)
    b = exact_pairs(dp, s_ids, t_ids, s_tab.canonical, t_tab.canonical)
    out.disagreements = sum(a[s] != t for s, t in b.items() if s in a)
    out.dp_only_pairs = sum(s not in a for s in b)
    out.offset_exact_pairs = len(a)
    out.missed_exact_pairs = sum(b.get(s) != t for s, t in a.items())
    return out


def set_special_mode(tokenizer, mode: str) -> None:
    """Make ``tokenizer``'s post-processor add ``"none"``, ``"bos"``, ``"eos"`` or ``"bos+eos"``
    around every text (tokens it lacks are skipped). Mutates ``tokenizer``: pass a private copy
    (:func:`xbench.assets.load_tokenizer`), never a shared one."""
    from tokenizers import processors

    if mode not in ("none", "bos", "eos", "bos+eos"):
        raise ValueError(f"mode={mode!r} is not supported; use none, bos, eos or bos+eos.")
    bos = tokenizer.bos_token if "bos" in mode else None
    eos = tokenizer.eos_token if "eos" in mode else None
    pieces = [f"{bos}:0"] if bos else []
    pieces.append("$A:0")
    pieces += [f"{eos}:0"] if eos else []
    specials = {(str(t), int(tokenizer.convert_tokens_to_ids(t))) for t in (bos, eos) if t}
    template = processors.TemplateProcessing(
        single=" ".join(pieces), special_tokens=sorted(specials)
    )
    backend = tokenizer.backend_tokenizer
    # Byte-level tokenizers keep their untrimmed offsets (Llama-3's released post-processor).
    if "ByteLevel" in str(backend.post_processor):
        backend.post_processor = processors.Sequence(
            [processors.ByteLevel(trim_offsets=False), template]
        )
    else:
        backend.post_processor = template


# Fragments the fuzz mixes with arbitrary Unicode: special-token strings of every family xbench
# ships (each is a special on some sides and plain text on others), non-NFC sequences (NFC
# composes, reorders or replaces them), emoji sequences, CJK, numerals and whitespace.
FUZZ_FRAGMENTS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<think>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<unused0>",
    "<|user|>",
    "<|end|>",
    "<|endofprompt|>",
    "<",
    "|>",
    "e\u0301",
    "a\u0308\u0323",
    "\uf900",
    "\u212b",
    "A\u030a",
    "\u1100\u1161\u11a8",
    "\u0928\u093c",
    "\u00e9",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🇯🇵",
    "日本語",
    "中文字",
    "한국어",
    "123",
    "45678",
    "3.14",
    " the",
    "Hello",
    "#### 42",
    "  ",
    "\n\n",
    "\t",
    "\u00a0",
    "\u200f",
)
SPECIAL_MODES = ("none", "bos", "eos", "bos+eos")


def mixed_texts(alphabet_ok=None):
    """Hypothesis strategy of texts mixing :data:`FUZZ_FRAGMENTS` with arbitrary Unicode.

    Args:
        alphabet_ok: Optional ``str -> bool`` filter per character (a tokenizer that cannot spell
            some bytes, like SmolLM2, cannot be aligned on them by any method).
    """
    from hypothesis import strategies as st

    chars = st.characters(exclude_categories=["Cs"])
    if alphabet_ok is not None:
        chars = chars.filter(alphabet_ok)
    return st.lists(
        st.one_of(st.text(chars, max_size=6), st.sampled_from(FUZZ_FRAGMENTS)),
        max_size=14,
    ).map("".join)


def spellable(tokenizer):
    """``char -> bool``: whether every UTF-8 byte of the character has a single-byte token
    (SmolLM2's byte alphabet lacks 21 bytes and silently drops them)."""
    raw = token_table(tokenizer).raw_bytes
    alphabet = {r[0] for r in raw if r is not None and len(r) == 1}
    if len(alphabet) == 256:
        return None
    return lambda ch: set(ch.encode("utf-8")) <= alphabet
