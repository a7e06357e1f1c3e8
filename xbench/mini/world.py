"""The miniature world: corpus, look-alike tokenizers and tiny pre-trained models, built once.

Everything is a pure function of the world config and cached under
``$XBENCH_CACHE/mini/<hash>/`` (a file lock makes concurrent sweep cells build it once):

* ``data/train.jsonl``, ``data/test.jsonl``: GSM8K-format arithmetic (``xbench.mini.corpus``);
* ``tokenizers/{student,digits,grouped}``: ``xbench.mini.tokenizers``;
* ``models/{student,teacher_A,teacher_B,teacher_C}``: Llama-architecture models pre-trained with
  next-token CE on the train split and filler text. Teachers are larger and trained longer than
  the student, which is only briefly pre-trained (the "base" before distillation).

Teacher A uses the digit-splitting tokenizer (like Qwen3), B the other digit-grouping
vocabulary (like Phi-4-mini), C the student's own tokenizer (like Llama-3.2-3B).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from xbench.assets import cache_dir
from xbench.io import read_jsonl, write_json
from xbench.mini import corpus
from xbench.mini.tokenizers import load_or_train

ROLES = {  # model role -> tokenizer kind
    "student": "student",
    "teacher_A": "digits",
    "teacher_B": "grouped",
    "teacher_C": "student",
}

DEFAULT_WORLD: dict[str, Any] = {
    # Bumped whenever the corpus or tokenizer code changes, so the cache key changes with it
    # (2: closed-book fact recall, tied embeddings, B trained on singular text; 3: 144 facts x 12
    # phrasings, answer "#### N", vocabularies 500; results/LOG.md 2026-11-30).
    "version": 3,
    "seed": 1234,
    "n_train": 1152,
    "n_test": 576,
    "n_filler": 200,
    "seq_len": 64,
    # Sized for a 2-core CPU: the whole world builds in a few minutes, once, then is cached.
    # The student's pre-training (the "base", as Llama-3.2-1B arrives pre-trained) is long enough
    # that it already recalls part of the facts in held-out phrasings (measured: 200 steps ~3%,
    # 300 steps ~46%, 400 steps ~98% exact match), so the study's short fine-tuning moves a
    # student in the middle of the scale rather than one at 0 or at the ceiling.
    "student": {
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "tie_word_embeddings": True,
        "steps": 300,
        "lr": 3e-3,
        "batch": 32,
    },
    "teacher": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "tie_word_embeddings": True,
        "steps": 400,
        "lr": 3e-3,
        "batch": 32,
    },
}
_WORLD: dict[str, Any] = dict(DEFAULT_WORLD)


def configure(world: dict[str, Any] | None) -> None:
    """Select the world config (a profile may shrink it); ``None`` restores the default."""
    global _WORLD
    merged = json.loads(json.dumps(DEFAULT_WORLD))
    for k, v in (world or {}).items():
        if isinstance(v, dict):
            merged[k].update(v)
        else:
            merged[k] = v
    _WORLD = merged
    _cached_tokenizer.cache_clear()
    _cached_model.cache_clear()


def world_hash() -> str:
    return hashlib.sha256(json.dumps(_WORLD, sort_keys=True).encode()).hexdigest()[:12]


def world_dir() -> Path:
    return cache_dir() / "mini" / world_hash()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def format_problem(p: dict[str, str]) -> str:
    """One training document in the evaluation prompt format: ``Question: ...\\nAnswer: ...``."""
    return f"Question: {p['question']}\nAnswer: {p['answer']}"


def data_dir() -> Path:
    d = world_dir() / "data"
    if not (d / "test.jsonl").exists():
        with _locked(world_dir() / ".data.lock"):
            if not (d / "test.jsonl").exists():
                corpus.write_split(d, _WORLD["n_train"], _WORLD["n_test"], _WORLD["seed"])
    return d


def train_texts() -> list[str]:
    """The distillation corpus: the train split's problems (filler is for pre-training only)."""
    rows = read_jsonl(data_dir() / "train.jsonl")
    return [format_problem(r) for r in rows]


def _pretrain_texts() -> list[str]:
    return train_texts() + corpus.filler_text(_WORLD["n_filler"], _WORLD["seed"] + 1)


@cache
def _cached_tokenizer(kind: str, wdir: str) -> PreTrainedTokenizerFast:
    with _locked(Path(wdir) / ".tok.lock"):
        return load_or_train(kind, _pretrain_texts(), Path(wdir) / "tokenizers")


def mini_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A look-alike tokenizer: ``student``, ``digits`` or ``grouped`` (or a model role)."""
    kind = ROLES.get(kind, kind)
    return _cached_tokenizer(kind, str(world_dir()))


def _pretrain(role: str, out: Path) -> None:
    """Next-token CE pre-training of one mini model; saved atomically with its log."""
    from xbench.engine.data import pack

    tok = mini_tokenizer(role)
    spec = dict(_WORLD["teacher" if role.startswith("teacher") else "student"])
    spec.update(_WORLD.get(role) or {})
    steps, lr, bsz = spec.pop("steps"), spec.pop("lr"), spec.pop("batch")
    seed = _WORLD["seed"] + sum(map(ord, role))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **spec,
        )
    )
    texts = pack(_pretrain_texts(), tok, _WORLD["seq_len"], "\n\n")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    t0, log = time.time(), []
    model.train()
    for step in range(steps):
        idx = torch.randint(len(texts), (bsz,), generator=g).tolist()
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == steps - 1:
            log.append({"step": step, "loss": loss.item()})
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    write_json(tmp / "pretrain_log.json", {"role": role, "seconds": time.time() - t0, "log": log})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


@cache
def _cached_model(role: str, wdir: str) -> Path:
    out = Path(wdir) / "models" / role
    if not (out / "config.json").exists():
        with _locked(Path(wdir) / f".{role}.lock"):
            if not (out / "config.json").exists():
                _pretrain(role, out)
    return out


def mini_model_path(role: str) -> Path:
    if role not in ROLES:
        raise ValueError(f"mini model role must be one of {sorted(ROLES)}, got {role!r}.")
    return _cached_model(role, str(world_dir()))


def _build_role(world: dict[str, Any], role: str) -> str:
    """Build one model in a worker process (spawned: it configures its own copy of the world)."""
    torch.set_num_threads(1)
    configure(world)
    return str(mini_model_path(role))


def build_world(roles: list[str] | None = None, workers: int = 1) -> dict[str, Any]:
    """Build the data, every tokenizer and the given models (default: all) now.

    The sweep calls this once before launching, so parallel cells find everything cached.

    Args:
        roles: Model roles to build (default: every role).
        workers: Models built at once, each in its own process with one thread (the models are
            independent; a file lock per role keeps concurrent builders from repeating work).
    """
    info: dict[str, Any] = {"dir": str(world_dir())}
    for kind in set(ROLES.values()):
        mini_tokenizer(kind)
    data_dir()
    roles = list(ROLES) if roles is None else roles
    todo = [r for r in roles if not (world_dir() / "models" / r / "config.json").exists()]
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
            list(pool.map(_build_role, [_WORLD] * len(todo), todo))
    for role in roles:
        path = mini_model_path(role)
        info[role] = json.loads((path / "pretrain_log.json").read_text())["seconds"]
    return info
