"""Students, teachers and evaluated models: the one loader, for training and evaluation.

A model spec (``conf/student/*.yaml``, ``conf/teacher/*.yaml``)::

    name: qwen3-4b              # label used in run directories and leaderboards
    tokenizer: Qwen/Qwen3-4B    # any source xbench.sources resolves (plug-in, asset, dir, Hub id)
    model: Qwen/Qwen3-4B        # any source xbench.sources resolves, or "config" (random init)
    arch: {...}                 # LlamaConfig fields of the model's shape: built from them when
                                # model == config; read by the memory estimate (engine.memory)
    dtype: auto                 # float32 | bfloat16 | float16 | auto | stored (below)

``dtype: auto`` loads teachers in bf16 on a GPU (they only run forward; fp32 would double their
memory: 16 GB for a 4B teacher) and everything else in fp32 (the student keeps fp32 master
weights and trains under bf16 autocast). ``stored`` keeps the checkpoint's own dtype (what
``python -m xbench.evaluate`` uses unless ``dtype=`` is given).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from xbench import sources
from xbench.io import plain

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Resolve a tokenizer spec through :mod:`xbench.sources`."""
    return sources.load_tokenizer(name)


def build_from_config(arch: dict[str, Any], vocab_size: int, seed: int) -> PreTrainedModel:
    """A randomly initialised Llama-architecture model (tiny models for CPU runs and tests)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{"vocab_size": vocab_size, **arch})  # arch may pad the head
    return LlamaForCausalLM(cfg)


def head_size(model: PreTrainedModel) -> int:
    """Rows of the LM head: may exceed the tokenizer (Qwen3 pads 151,669 tokens to 151,936)."""
    return int(model.get_output_embeddings().weight.shape[0])


def check_vocab(model: PreTrainedModel, tok: PreTrainedTokenizerBase, field: str) -> None:
    """Fail with one sentence when the tokenizer cannot belong to the model.

    Either the tokenizer has ids the model cannot embed, or the embedding is larger than the
    tokenizer by more than padding: a head padded past the tokenizer is normal (Qwen3: 151,936
    rows for 151,669 tokens; GPT-2 padded to 50,304), so only rows beyond the next multiple of
    1024 count as a foreign vocabulary.
    """
    n_tok, rows = len(tok), int(model.get_input_embeddings().weight.shape[0])
    if n_tok > rows or rows > -(-n_tok // 1024) * 1024:
        name = getattr(tok, "name_or_path", "?")
        raise ValueError(
            f"{field}: the model embedding has {rows} rows but the tokenizer {name!r} has "
            f"{n_tok} tokens; point {field}.tokenizer and {field}.model at the same model family."
        )


def resolve_dtype(spec: DictConfig | dict[str, Any], field: str, device: str) -> torch.dtype:
    """The dtype a model spec asks for; ``auto``: bf16 for a teacher on a GPU, else fp32;
    ``stored``: ``"auto"`` (transformers keeps the checkpoint's dtype)."""
    name = str(plain(spec).get("dtype") or "auto")
    if name == "stored":
        return "auto"  # type: ignore[return-value]
    if name == "auto":
        teacher = field.startswith("teachers")
        return torch.bfloat16 if teacher and device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ValueError(
            f"{field}.dtype must be auto, stored or one of {sorted(DTYPES)}; got {name!r}."
        )
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
    s = plain(spec)
    dtype = resolve_dtype(s, field, device)
    src = str(s.get("model", ""))
    if not src:
        raise ValueError(
            f"{field}.model is empty; set a Hub id, path, asset, plug-in source or config."
        )
    if src == "config":
        if not s.get("arch"):
            raise ValueError(f"{field}.model is 'config' but {field}.arch is missing.")
        # Built where it will run: initialising a billions-parameter model on the CPU takes
        # minutes, on the GPU seconds.
        with torch.device(device if device.startswith("cuda") else "cpu"):
            model = build_from_config(dict(s["arch"]), len(tok), seed).to(dtype)
    else:
        path = sources.model_path(src)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as err:
            raise ValueError(
                f"{field}.model={src!r} is neither a registry asset {sources.known_models()}, a "
                f"plug-in source, a checkpoint directory, nor reachable on the Hub "
                f"({type(err).__name__}); check the path or Hub access."
            ) from err
    check_vocab(model, tok, field)
    return model
