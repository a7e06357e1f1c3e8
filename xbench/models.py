"""Students and teachers: from a Hub id or local checkpoint, the miniature world, or a config.

A model spec (``conf/student/*.yaml``, ``conf/teacher/*.yaml``)::

    name: qwen3-4b              # label used in run directories and leaderboards
    tokenizer: Qwen/Qwen3-4B    # Hub id, local dir, asset (llama3, qwen3, smollm2), mini:KIND
    model: Qwen/Qwen3-4B        # Hub id, local dir, mini:ROLE, or "config" (random init from arch)
    arch: {...}                 # LlamaConfig fields, used when model == config
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _plain(spec: DictConfig | dict[str, Any]) -> dict[str, Any]:
    out = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec
    assert isinstance(out, dict)
    return dict(out)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Resolve a tokenizer spec: ``mini:KIND`` or anything ``xbench.assets`` knows."""
    if name.startswith("mini:"):
        from xbench.mini.world import mini_tokenizer

        return mini_tokenizer(name.split(":", 1)[1])
    from xbench.assets import load_tokenizer as load_asset

    return load_asset(name)


def build_from_config(arch: dict[str, Any], vocab_size: int, seed: int) -> PreTrainedModel:
    """A randomly initialised Llama-architecture model (tiny models for CPU runs and tests)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, **arch)
    return LlamaForCausalLM(cfg)


def head_size(model: PreTrainedModel) -> int:
    """Rows of the LM head: may exceed the tokenizer (Qwen3 pads 151,669 tokens to 151,936)."""
    return int(model.get_output_embeddings().weight.shape[0])


def check_vocab(model: PreTrainedModel, tok: PreTrainedTokenizerBase, field: str) -> None:
    """Fail with one sentence when the tokenizer has ids the model head cannot score."""
    n_tok, n_head = len(tok), head_size(model)
    if n_tok > n_head:
        raise ValueError(
            f"{field}: the tokenizer has {n_tok} tokens but the model head has only {n_head} rows; "
            f"point {field}.tokenizer and {field}.model at the same model family."
        )


def load_model(
    spec: DictConfig | dict[str, Any],
    tok: PreTrainedTokenizerBase,
    *,
    field: str,
    seed: int = 0,
    dtype: str = "float32",
) -> PreTrainedModel:
    """Load or build the model named by ``spec`` and check it against its tokenizer."""
    s = _plain(spec)
    src = str(s.get("model", ""))
    if not src:
        raise ValueError(f"{field}.model is empty; set a Hub id, path, mini:ROLE or config.")
    if src == "config":
        if not s.get("arch"):
            raise ValueError(f"{field}.model is 'config' but {field}.arch is missing.")
        model = build_from_config(dict(s["arch"]), len(tok), seed)
    elif src.startswith("mini:"):
        from xbench.mini.world import mini_model

        model = mini_model(src.split(":", 1)[1])
    else:
        model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=DTYPES[dtype])
    check_vocab(model, tok, field)
    return model
