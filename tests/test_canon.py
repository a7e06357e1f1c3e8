"""Canonical token strings: byte tables, markers, byte fallback, roles, determinism, speed."""

from __future__ import annotations

import time
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from xbench.assets import shared_tokenizer
from xbench.tokenpair import canon


def test_gpt2_byte_table_is_exact() -> None:
    table = canon.bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    # Pinned against GPT-2's encoder: an off-by-3 variant gets every one of these wrong.
    assert table[0x20] == "Ġ" and table[0x0A] == "Ċ" and table[0x00] == "Ā"
    assert table[0x7F] == "ġ" and table[0xAD] == "Ń" and table[ord("A")] == "A"


def _sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny SentencePiece-style (Metaspace, byte fallback) tokenizer."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁Hello": 3, "▁world": 4, "<0x0A>": 5}
    vocab |= {"<0xE4>": 6, "<0xB8>": 7, "<0xAD>": 8, "a": 9, "▁": 10, "<|im_start|>": 11}
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>"],
    )


def test_sentencepiece_markers_and_byte_fallback() -> None:
    vocab = canon.canonical_vocab(_sentencepiece_tokenizer())
    assert vocab[:5] == ["<|role:unk|>", "<|role:bos|>", "<|role:eos|>", " Hello", " world"]
    assert vocab[5] == "\n"  # <0x0A> is a complete character
    assert vocab[6:9] == ["<0xE4>", "<0xB8>", "<0xAD>"]  # partial UTF-8 stays hex
    assert vocab[10] == " " and vocab[11] == "<|role:turn_start|>"


def test_byte_level_markers_match_sentencepiece_form() -> None:
    llama, qwen = shared_tokenizer("llama3"), shared_tokenizer("qwen3")
    for tok in (llama, qwen):
        vocab = canon.canonical_vocab(tok)
        assert len(vocab) == len(tok)
        assert vocab[tok.convert_tokens_to_ids("ĠHello")] == " Hello"
        assert vocab[tok.convert_tokens_to_ids("Ċ")] == "\n"
        assert vocab[tok.convert_tokens_to_ids("Ġ")] == " "
    # A byte-level token holding one byte of a multi-byte character reads like SentencePiece's.
    assert canon.canonical_vocab(llama)[llama.convert_tokens_to_ids("ä")] == "<0xE4>"


def test_special_roles_across_families() -> None:
    llama, qwen, smol = (shared_tokenizer(n) for n in ("llama3", "qwen3", "smollm2"))
    lv, qv, sv = (canon.canonical_vocab(t) for t in (llama, qwen, smol))
    assert lv[128_000] == "<|role:bos|>" and lv[128_001] == "<|role:eos|>"
    assert lv[llama.convert_tokens_to_ids("<|start_header_id|>")] == "<|role:turn_start|>"
    assert qv[qwen.convert_tokens_to_ids("<|im_start|>")] == "<|role:turn_start|>"
    assert sv[smol.convert_tokens_to_ids("<|im_start|>")] == "<|role:turn_start|>"
    assert lv[llama.convert_tokens_to_ids("<|eot_id|>")] == qv[151_645] == "<|role:turn_end|>"
    # pad == eos: one id, one role (eos), so the EOS still matches the other family's EOS.
    assert qwen.pad_token_id == qwen.eos_token_id and qv[151_643] == "<|role:eos|>"
    assert qv[qwen.convert_tokens_to_ids("<think>")] == "<think>"  # not special: literal text


def test_deterministic_idempotent_and_fast() -> None:
    qwen = shared_tokenizer("qwen3")
    start = time.perf_counter()
    table = canon._build_table(qwen)  # uncached build
    assert time.perf_counter() - start < 10.0
    assert table.canonical == canon.canonical_vocab(qwen) == canon.canonical_vocab(qwen)
    for s in table.canonical[:5000]:
        assert canon.bytes_to_text(s.encode("utf-8")) == s or "<0x" in s


def _alphabet_covers(tok, text: str) -> bool:
    """Whether a byte-level vocabulary holds every byte of ``text`` (SmolLM2 lacks 21 bytes and
    silently drops them, so its decode cannot round-trip such text)."""
    raw = canon.token_table(tok).raw_bytes
    alphabet = {r[0] for r in raw if r is not None and len(r) == 1}
    return set(text.encode("utf-8")) <= alphabet


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
def test_decode_ids_recovers_text(text: str) -> None:
    for name in ("llama3", "qwen3", "smollm2"):
        tok = shared_tokenizer(name)
        if not _alphabet_covers(tok, text):
            continue
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if any(canon.token_table(tok).special[i] for i in ids):
            continue  # the text spells a special token, e.g. "<|eot_id|>"
        decoded = canon.decode_ids(tok, ids)
        assert unicodedata.normalize("NFC", decoded) == unicodedata.normalize("NFC", text)
