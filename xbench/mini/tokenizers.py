"""Look-alike tokenizers for the miniature world, trained locally with the `tokenizers` library.

The miniature study needs the same vocabulary mismatch as Llama-3 vs Qwen3:

* ``student`` groups digits in runs of up to three (Llama-3's ``\\p{N}{1,3}``) and holds *every*
  1-, 2- and 3-digit numeral as one token (Llama-3 has all 1,110 of them);
* ``digits`` (teacher A, like Qwen3) splits every digit, so no multi-digit student numeral has a
  1-to-1 partner: GOLD's uncommon-token failure;
* ``grouped`` (teacher B, like Phi-4-mini) groups digits like the student and holds the same
  numerals, but its word pieces are learnt from other text (the same world written in the
  singular), so some student words are missing and split into a piece B holds and the student
  does not (student `` apples`` -> B `` apple`` + ``s``, as Llama-3's ``Hund`` meets Phi's
  ``Hundreds``): GOLD's exact common set leaves them out, H-KL's relaxed set (top W weight >=
  0.6) pairs them. B also lays out its ids differently;
* teacher C shares the student's tokenizer (same-tokenizer KD).

All are byte-level BPE with GPT-2's byte-to-unicode alphabet and character offsets, so both
aligners and the canonicalizer treat them exactly like the real ones.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from xbench.io import atomic_path

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# Llama-3's split pattern with the digit run length as a parameter (1 = Qwen-style).
_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,%d}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

KINDS: dict[str, dict[str, int | bool]] = {
    # name: digit run length, word-piece BPE vocab size, append all numerals, train on the
    # singular form of the text
    "student": {"digits": 3, "vocab": 500, "numerals": True, "singular": False},
    "digits": {"digits": 1, "vocab": 760, "numerals": False, "singular": False},
    "grouped": {"digits": 3, "vocab": 500, "numerals": True, "singular": True},
}
# Plural nouns ("apples") -> singular ("apple"): B's other training text.
_PLURAL_RE = re.compile(r"\b([a-z]{3,})s\b")
# Special-token layouts differ per family (as Llama-3, Qwen3 and Phi-4 differ), so ids of equal
# strings differ too and nothing can match vocabularies by id by accident.
_SPECIALS = {
    "student": ["<|bos|>", "<|eos|>", "<|pad|>"],
    "digits": ["<|eos|>", "<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"],
    "grouped": ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|eos|>", "<|bos|>"],
}


def numerals(max_len: int = 3) -> list[str]:
    """Every numeral string of 1..max_len digits, including leading zeros (as Llama-3 holds)."""
    out: list[str] = []
    for n in range(1, max_len + 1):
        out.extend(f"{i:0{n}d}" for i in range(10**n))
    return out


def _add_numerals(tok: Tokenizer) -> Tokenizer:
    """Append every 2- and 3-digit numeral to a byte-level BPE as a token with its merge.

    BPE learns merges by frequency, so a budget-limited vocabulary would hold a frequency-
    dependent subset of numerals; Llama-3 (and Phi-4) hold all of them. The merges go after the
    learned ones: digit runs are pre-tokenized apart from letters, so they never compete.
    """
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list = spec["model"]["merges"]
    have = {tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges}
    for num in numerals(3):
        if len(num) == 1 or num in vocab:
            continue
        pair = (num[:-1], num[-1]) if len(num) == 2 or num[:2] in vocab else (num[0], num[1:])
        vocab[num] = len(vocab)
        if pair not in have:
            merges.append(list(pair))
            have.add(pair)
    return Tokenizer.from_str(json.dumps(spec))


def train_tokenizer(kind: str, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train one look-alike tokenizer of the given kind on ``texts``.

    Args:
        kind: one of ``KINDS`` (``student``, ``digits``, ``grouped``).
        texts: training text.

    Returns:
        A fast tokenizer that adds BOS at the start of every sequence (like Llama-3) for the
        digit-grouping kinds and no BOS for ``digits`` (like Qwen3).
    """
    if kind not in KINDS:
        raise ValueError(f"tokenizer kind must be one of {sorted(KINDS)}, got {kind!r}.")
    spec = KINDS[kind]
    specials = _SPECIALS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PATTERN % int(spec["digits"])), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(spec["vocab"]) + len(specials),
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(texts)
    if spec["singular"]:
        texts = [re.sub(_PLURAL_RE, r"\1", t) for t in texts]
    tok.train_from_iterator(texts, trainer=trainer)
    if spec["numerals"]:
        tok = _add_numerals(tok)
    add_bos = kind != "digits"
    if add_bos:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=add_bos,
        clean_up_tokenization_spaces=False,
    )


def fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """Stable hash of a tokenizer's full definition (vocab, merges, specials, pipeline)."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def load_or_train(kind: str, texts: Iterable[str], cache_dir: Path) -> PreTrainedTokenizerFast:
    """Load ``cache_dir/kind`` or train it and save it there atomically."""
    path = cache_dir / kind
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    tok = train_tokenizer(kind, texts)
    tmp = cache_dir / f".{kind}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    with atomic_path(cache_dir / f".{kind}.fingerprint") as p:
        p.write_text(json.dumps({"fingerprint": fingerprint(tok)}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return PreTrainedTokenizerFast.from_pretrained(str(path))
