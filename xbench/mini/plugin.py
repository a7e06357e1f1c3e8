"""The miniature world as an xbench source plug-in (``mini:KIND`` / ``mini:ROLE``, ``data=mini``).

Registered through the ``xbench.sources`` entry point in ``pyproject.toml``; the core reaches the
world only through :mod:`xbench.sources`. This module is the plug-in's only door: it maps the
registry's hooks onto :mod:`xbench.mini.world` (tokenizers, pre-trained models, the train split),
:mod:`xbench.mini.corpus` (the ``world.n_test`` rule) and the lm-eval tasks in ``tasks/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from xbench.io import plain
from xbench.mini import corpus
from xbench.sources import Plugin

__all__ = ["PLUGIN"]


def _world() -> ModuleType:
    # Imported on first use: config validation and plans load the plug-in, and the world pulls in
    # torch and transformers.
    from xbench.mini import world

    return world


def _names(kind: str) -> list[str]:
    from xbench.mini.tokenizers import KINDS

    roles = sorted(_world().ROLES)
    return roles if kind == "model" else sorted({*KINDS, *roles})


def _configure(cfg: Mapping[str, Any]) -> None:
    """Select the world a run config describes (its ``world`` block; absent: leave it)."""
    block = cfg.get("world")
    if block is not None:
        _world().configure(plain(block))


def _validate(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    n_test = (cfg.get("world") or {}).get("n_test")
    if n_test is None:
        return []
    step, top = corpus.MAX_DIGITS, corpus.N_TEST_MAX
    if isinstance(n_test, int) and not n_test % step and 0 < n_test <= top:
        return []
    near = min(top, step * max(1, int(n_test or 0) // step))
    return [
        (
            "world.n_test",
            f"world.n_test={n_test!r}: the miniature test split is stratified by answer length, "
            f"so it needs a multiple of {step} from {step} to {top}; set e.g. "
            f"world.n_test={near}.",
        )
    ]


def _prepare_sweep(cfg: Mapping[str, Any], roles: list[str], workers: int) -> dict[str, Any]:
    """Build the world's data, tokenizers and the sweep's models once, before any cell starts."""
    _configure(cfg)
    return _world().build_world(roles, workers=workers)


def _eval_metadata(meta: dict[str, Any], cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Pin ``mini_data_dir`` to the data actually scored, so results.json records it.

    A cell trained on the world (``cfg.data.source == "mini"``) is scored on that world's
    held-out split; a standalone evaluation with ``mini_data_dir: null`` on the corpus the other
    ``mini_*`` keys generate.
    """
    if "mini_data_dir" not in meta:
        return meta
    if cfg is not None and (cfg.get("data") or {}).get("source") == "mini":
        _configure(cfg)
        meta["mini_data_dir"] = str(_world().data_dir())
    elif meta["mini_data_dir"] is None:
        from xbench.mini.tasks.utils import data_dir

        meta["mini_data_dir"] = str(data_dir(**meta))
    return meta


PLUGIN = Plugin(
    scheme="mini",
    tokenizer=lambda kind: _world().mini_tokenizer(kind),
    model_path=lambda role: _world().mini_model_path(role),
    names=_names,
    corpus=lambda data_cfg: _world().train_texts(),
    configure=_configure,
    validate=_validate,
    prepare_sweep=_prepare_sweep,
    eval_metadata=_eval_metadata,
    task_dirs={"mini": Path(__file__).resolve().parent / "tasks"},
)
