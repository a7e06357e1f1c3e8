"""Students and teachers: from a Hub id or local checkpoint, the miniature world, or a config.

A model spec (``conf/student/*.yaml``, ``conf/teacher/*.yaml``)::

    name: qwen3-4b              # label used in run directories and leaderboards
    tokenizer: Qwen/Qwen3-4B    # Hub id, local dir, asset (llama3, qwen3, smollm2), mini:KIND
    model: Qwen/Qwen3-4B        # Hub id, local dir, mini:ROLE, or "config" (random init from arch)
    arch: {...}                 # LlamaConfig fields of the model's shape: built from them when
                                # model == config; read by the memory estimate (xbench.memory)
    dtype: auto                 # float32 | bfloat16 | float16 | auto (below)

``dtype: auto`` loads teachers in bf16 on a GPU (they only run forward; fp32 would double their
memory: 16 GB for a 4B teacher) and everything else in fp32 (the student keeps fp32 master
weights and trains under bf16 autocast).
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
    cfg = LlamaConfig(**{"vocab_size": vocab_size, **arch})  # arch may pad the head
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


def resolve_dtype(spec: DictConfig | dict[str, Any], field: str, device: str) -> torch.dtype:
    """The dtype a model spec asks for; ``auto``: bf16 for a teacher on a GPU, else fp32."""
    name = str(_plain(spec).get("dtype") or "auto")
    if name == "auto":
        teacher = field.startswith("teachers")
        return torch.bfloat16 if teacher and device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"{field}.dtype must be auto or one of {sorted(DTYPES)}; got {name!r}.")
    return DTYPES[name]


def load_model(
    spec: DictConfig | dict[str, Any],
    tok: PreTrainedTokenizerBase,
    *,
    field: str,
    seed: int = 0,
    device: str = "cpu",
) -> PreTrainedModel:
    """Load or build the model named by ``spec`` in its dtype (:func:`resolve_dtype` for
    ``device``) and check it against its tokenizer. Models built from ``arch`` are created on
    ``device`` when it is a GPU; loaded ones stay on the CPU."""
    s = _plain(spec)
    dtype = resolve_dtype(s, field, device)
    src = str(s.get("model", ""))
    if not src:
        raise ValueError(f"{field}.model is empty; set a Hub id, path, mini:ROLE or config.")
    if src == "config":
        if not s.get("arch"):
            raise ValueError(f"{field}.model is 'config' but {field}.arch is missing.")
        # Built where it will run: initialising a billions-parameter model on the CPU takes
        # minutes, on the GPU seconds.
        with torch.device(device if device.startswith("cuda") else "cpu"):
            model = build_from_config(dict(s["arch"]), len(tok), seed).to(dtype)
    elif src.startswith("mini:"):
        from xbench.mini.world import mini_model

        model = mini_model(src.split(":", 1)[1]).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    check_vocab(model, tok, field)
    return model
