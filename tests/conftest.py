"""Shared test setup: offline, CPU-only, quiet."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports transformers / datasets / wandb: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="xbench-hf-")


@pytest.fixture(scope="session")
def llama3_qwen3():
    """(Llama-3 tokenizer, Qwen3 tokenizer, their cached W): loaded once for the real-vocabulary
    kernel tests (test_projection_ops, test_hybrid_ops), ~5 s each time otherwise."""
    from xbench.assets import load_tokenizer
    from xbench.tokenpair.projection import load_or_build

    s_tok, t_tok = load_tokenizer("llama3"), load_tokenizer("qwen3")
    return s_tok, t_tok, load_or_build(s_tok, t_tok)


@pytest.fixture(scope="session")
def paper_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``python -m xbench.sweep +experiment=llama1b_vs_gold plan=true`` run once for the tests
    that read it (the cells of the paper's table, their memory estimates): (stdout, its cwd)."""
    from engine_utils import run_module

    cwd = tmp_path_factory.mktemp("paper_plan")
    args = ["-m", "xbench.sweep", "+experiment=llama1b_vs_gold", "plan=true"]
    return run_module(args, cwd=cwd).stdout, cwd
