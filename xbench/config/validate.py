"""``validate(cfg)``: every rule a config must meet, checked before anything is loaded or launched.

Each failure is a :class:`ConfigError` whose message is one sentence that names the config field
(as the user would type it on the command line) and says how to fix it. Field types, ranges and
enums come from the schema (``xbench.config.schema``); the cross-field rules live here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xbench import sources
from xbench.config.schema import (
    CELL_GROUPS,
    KD_METHODS,
    CellConf,
    EvalConf,
    EvalTask,
    KdConf,
    ModelSpec,
    PairConf,
)
from xbench.io import plain

__all__ = ["ConfigError", "validate", "validate_eval", "validate_pair"]


class ConfigError(ValueError):
    """A config value that cannot work; ``str(err)`` is the one sentence shown to the user."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).replace("'", "")


def plain_job(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved to plain containers, except ``hydra`` (only the launcher target kept)."""
    out = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in ((k, cfg[k]) for k in cfg if k != "hydra")
    }
    hydra = cfg.get("hydra")
    if hydra is not None:
        out["hydra"] = {
            "launcher": {"_target_": OmegaConf.select(hydra, "launcher._target_", default="")},
            "sweep": {"dir": str(OmegaConf.select(cfg, "hydra.sweep.dir"))},
        }
    return out


# --------------------------------------------------------------------------- one field


def _range_text(rule: dict[str, Any]) -> str:
    parts = []
    for key, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in rule:
            parts.append(f"{word} {rule[key]:g}")
    return " and ".join(parts)


def _kind(tp: Any) -> tuple[Any, bool]:
    """The base type of an annotation and whether ``None`` is allowed."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def check_field(path: str, value: Any, tp: Any, rule: dict[str, Any]) -> None:
    """Check one value against its annotation and its ``metadata`` rule; raise ConfigError."""
    base, nullable = _kind(tp)
    help_ = f" ({rule['help']})" if rule.get("help") else ""
    shown = f"{path}={_show(value)}"
    if value is None:
        if nullable or None in rule.get("choices", ()):
            return
        raise ConfigError(path, f"{shown} must be set{help_}.")
    origin = typing.get_origin(base) or base
    if origin is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"{shown}: use true or false{help_}.")
        return
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"{shown}: set it to an integer{help_}.")
    elif origin is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ConfigError(path, f"{shown}: set it to a number{help_}.")
    elif origin is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"{shown}: set it to a string{help_}.")
    elif origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"{shown}: set it to a list{help_}.")
        if "length" in rule and len(value) != rule["length"]:
            raise ConfigError(path, f"{shown}: give exactly {rule['length']} values{help_}.")
        (item,) = typing.get_args(base) or (Any,)
        item_rule = {k: v for k, v in rule.items() if k not in ("length", "choices")}
        for i, v in enumerate(value):
            check_field(f"{path}[{i}]", v, item, item_rule)
        return
    elif origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"{shown}: set it to a mapping{help_}.")
        return
    choices = rule.get("choices")
    if choices is not None and value not in choices:
        names = ", ".join(str(c) for c in choices if c is not None)
        raise ConfigError(path, f"{shown} is not supported; use one of {names}{help_}.")
    if isinstance(value, int | float):
        low_ok = ("gt" not in rule or value > rule["gt"]) and (
            "ge" not in rule or value >= rule["ge"]
        )
        high_ok = ("lt" not in rule or value < rule["lt"]) and (
            "le" not in rule or value <= rule["le"]
        )
        if not (low_ok and high_ok):
            raise ConfigError(path, f"{shown} is out of range: set it {_range_text(rule)}{help_}.")


def check_group(prefix: str, node: Any, schema: type) -> None:
    """Check every schema field present in ``node`` (a mapping) under ``prefix``."""
    if not isinstance(node, dict):
        raise ConfigError(prefix, f"{prefix}={_show(node)}: it must be a mapping of fields.")
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in node:
            check_field(path, node[f.name], hints[f.name], dict(f.metadata))


# --------------------------------------------------------------------------- sources


def _offline() -> bool:
    return any(
        os.environ.get(k, "") in ("1", "true", "True")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id
        return False


def check_source(path: str, value: str, kind: str, *, check_hub: bool) -> None:
    """``value`` names a model or tokenizer xbench can load; Hub ids are checked when offline.

    Args:
        path: The config field (``student.model``).
        value: Its value.
        kind: ``model`` or ``tokenizer``.
        check_hub: Check against this machine: assets, mini roles, and (when the Hub is offline,
            ``HF_HUB_OFFLINE=1``) Hub ids in the local Hub cache. Plans skip it: they describe
            a run elsewhere (a cluster), and the checks would import torch.
    """
    if (value == "config" and kind == "model") or Path(value).expanduser().is_dir():
        return
    if not check_hub:
        return  # a plan describes another machine (a cluster): nothing here to look up
    from xbench.assets import OFFLINE_MODELS, OFFLINE_TOKENIZERS

    plugin, name = sources.split(value)
    if plugin is not None:
        known = plugin.names(kind)
        if name not in known:
            s = plugin.scheme
            names = ", ".join(f"{s}:{n}" for n in known)
            raise ConfigError(path, f"{path}={value!r}: the {s} plug-in has {names}.")
        return
    assets = OFFLINE_MODELS if kind == "model" else OFFLINE_TOKENIZERS
    if value in assets:
        return
    looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1
    if looks_local:
        raise ConfigError(path, f"{path}={value!r}: no such directory; fix the path.")
    probe = "config.json" if kind == "model" else "tokenizer_config.json"
    if _offline() and not _hub_cached(value, probe):
        raise ConfigError(
            path,
            f"{path}={value!r} is not an offline asset ({', '.join(assets)}), a directory, or in "
            "the local Hub cache, and the Hub is offline (HF_HUB_OFFLINE=1): download it first or "
            "name a local directory.",
        )


# --------------------------------------------------------------------------- eval tasks


def _local_tasks(include: Any, p: str) -> set[str] | None:
    """Task and group names defined by the YAMLs of ``task_include`` (None: cannot tell)."""
    folders = include if isinstance(include, list) else [include]
    names: set[str] = set()
    for folder in folders:
        if folder is None:
            continue
        folder = str(folder)
        if folder.startswith("lm_eval:"):
            return None  # lm-eval's own task folders: it resolves them itself
        root = sources.task_folder(folder)
        if not root.is_dir():
            raise ConfigError(
                f"{p}task_include",
                f"{p}task_include={folder!r}: no such task folder (xbench/evaluate/tasks, a "
                "plug-in's, or absolute); fix the name.",
            )
        for y in root.rglob("*.yaml"):
            for line in y.read_text(encoding="utf-8").splitlines():
                key, _, val = line.partition(":")
                if key in ("task", "group", "tag") and val.strip():
                    names.add(val.strip().strip("'\""))
    return names


def _check_eval(prefix: str, ev: dict[str, Any]) -> None:
    """An eval suite config under ``prefix`` (``eval`` in a cell, empty for xbench.evaluate)."""
    p = f"{prefix}." if prefix else ""
    check_group(prefix, ev, EvalConf)
    # A task set to null is dropped (an experiment removing a task of its suite: Hydra merges
    # mappings, so it cannot delete a key).
    tasks = {k: v for k, v in (ev.get("tasks") or {}).items() if v is not None}
    if not tasks:
        raise ConfigError(f"{p}tasks", f"{p}tasks is empty; name at least one task.")
    known = None if ev.get("include_defaults") else _local_tasks(ev.get("task_include"), p)
    for name, spec in tasks.items():
        if known is not None and name not in known:
            raise ConfigError(
                f"{p}tasks.{name}",
                f"{p}tasks.{name} is not a task of {p}task_include; use one of "
                f"{', '.join(sorted(known)) or 'none'}.",
            )
        check_group(f"{p}tasks.{name}", spec, EvalTask)
    limit = ev.get("limit")
    if isinstance(limit, float) and not limit.is_integer() and limit >= 1:
        raise ConfigError(
            f"{p}limit", f"{p}limit={limit}: give a whole number of docs or a fraction below 1."
        )


# --------------------------------------------------------------------------- entry points


def validate(
    cfg: DictConfig | dict[str, Any], *, plan: bool | None = None, machine: bool = True
) -> None:
    """Check one sweep/train job config (before ``resolve_cell``); raise :class:`ConfigError`.

    Args:
        cfg: The composed job config (``conf/sweep.yaml`` or ``conf/train.yaml`` plus the
            experiment and overrides); a ``hydra`` key, if present, is read for the launcher only.
        plan: Plan mode (default: ``cfg.plan``): skips the checks that concern this machine
            (models in the local Hub cache, a GPU for a local launcher).
        machine: False skips those checks too (a sweep checks every job's values first: they
            are cheap, while the machine checks import torch).
    """
    if isinstance(cfg, DictConfig):
        cfg = plain_job(cfg)
    launcher = str(((cfg.get("hydra") or {}).get("launcher") or {}).get("_target_") or "")
    c = {k: v for k, v in cfg.items() if k != "hydra"}
    check_group("", c, CellConf)
    plan = bool(c.get("plan")) if plan is None else plan
    for group, schema in CELL_GROUPS.items():
        if group in c:
            if group == "eval":
                _check_eval("eval", c["eval"])
            else:
                check_group(group, c[group], schema)
    zoo = c.get("zoo") or {}
    for name, spec in zoo.items():
        check_group(f"zoo.{name}", spec, ModelSpec)
    spec = _check_cell(c)

    # Cross-field rules.
    tr, res = c.get("train", {}), c.get("resources", {})
    world = int(res.get("nodes", 1)) * int(res.get("tasks_per_node", 1))
    per_step = int(tr.get("micro_batch_size", 1)) * world
    gbs = int(tr.get("global_batch_size", per_step))
    if gbs % per_step:
        raise ConfigError(
            "train.global_batch_size",
            f"train.global_batch_size={gbs} is not a multiple of train.micro_batch_size x ranks "
            f"({tr.get('micro_batch_size')} x {world} = {per_step}): set it to "
            f"{max(per_step, gbs - gbs % per_step)} or {gbs - gbs % per_step + per_step}.",
        )
    if tr.get("teacher_cache") and tr.get("teacher_parallel") == "fsdp":
        raise ConfigError(
            "train.teacher_cache",
            "train.teacher_cache=true does not work with train.teacher_parallel=fsdp (per-rank "
            "cache hits would desynchronise the sharded teacher); set one of them off.",
        )
    data = c.get("data", {})
    known = ("jsonl", "shards", "hf", *sources.plugins())
    if "source" in data and data["source"] not in known:
        raise ConfigError(
            "data.source",
            f"data.source={data['source']!r} is not supported; use one of {', '.join(known)} "
            "(the corpus).",
        )
    if data.get("source") == "jsonl" and not (data.get("path") and Path(data["path"]).is_file()):
        raise ConfigError(
            "data.path", f"data.path={data.get('path')!r}: source=jsonl needs an existing file."
        )
    if data.get("source") == "hf" and not data.get("name"):
        raise ConfigError("data.name", "data.name is empty: source=hf needs a dataset id.")
    if data.get("source") == "shards" and not data.get("files"):
        raise ConfigError(
            "data.files", "data.files is empty: source=shards needs a glob, e.g. 'DIR/*.parquet'."
        )
    if data.get("source") in ("shards", "hf") and bool(data.get("text_field")) == bool(
        data.get("ids_field")
    ):
        raise ConfigError(
            "data.text_field",
            "set exactly one of data.text_field (a text column) and data.ids_field (token ids, "
            "with data.detokenizer).",
        )
    if data.get("ids_field") and not data.get("detokenizer"):
        raise ConfigError(
            "data.detokenizer",
            "data.ids_field needs data.detokenizer (gpt2, or a tokenizer spec such as llama3).",
        )
    for plugin in sources.plugins().values():  # the keys a plug-in owns (e.g. world.*)
        for field_path, sentence in plugin.validate(c) if plugin.validate else []:
            raise ConfigError(field_path, sentence)
    _check_kd_rules(c, spec)
    if machine:
        _check_machine(c, spec, launcher, plan)


def _check_kd_rules(c: dict[str, Any], spec: dict[str, Any]) -> None:
    """The objective's own kd:/mix: rules (which knob each method reads), where the engine
    provides them (``xbench.losses.options.check_kd_options``, issue 13); the schema's ranges
    and enums above hold either way."""
    import importlib.util

    if importlib.util.find_spec("xbench.losses.options") is None:
        return
    from xbench.losses import options

    check = getattr(options, "check_kd_options", None)
    if check is None:
        return
    zoo = c.get("zoo") or {}
    teachers = [
        {
            **zoo[t["teacher"]],
            "method": t["method"],
            "weight": t.get("weight", 1.0),
            "kd": t.get("kd") or {},
        }
        for t in spec.get("teachers") or []
    ]
    try:
        check({**c, "teachers": teachers})
    except ValueError as exc:
        raise ConfigError("kd", str(exc)) from exc


def _check_machine(c: dict[str, Any], spec: dict[str, Any], launcher: str, plan: bool) -> None:
    """What this machine must provide: a GPU for a local cuda run, the models and tokenizers."""
    tr, zoo = c.get("train", {}), c.get("zoo") or {}
    local = "slurm" not in launcher.lower()
    if not plan and local and tr.get("device") == "cuda" and tr.get("enabled", True):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device",
                "train.device='cuda' but this machine has no CUDA device: set train.device=cpu "
                "(or auto), or launch on a GPU cluster with hydra/launcher=slurm.",
            )
    # Sources: the student and the teachers this cell uses.
    models = [("student", c["student"])] if "student" in c else []
    models += [(f"zoo.{t['teacher']}", zoo[t["teacher"]]) for t in spec.get("teachers") or []]
    for prefix, m in models:
        if m.get("model") == "config" and not m.get("arch"):
            raise ConfigError(
                f"{prefix}.arch", f"{prefix}.model='config' needs {prefix}.arch (hidden_size, ...)."
            )
        for kind in ("model", "tokenizer"):
            if kind in m:
                check_source(f"{prefix}.{kind}", str(m[kind]), kind, check_hub=not plan)


def _check_cell(c: dict[str, Any]) -> dict[str, Any]:
    """The chosen cell exists; its teachers are in the zoo with known methods and kd fields."""
    cells = c.get("cells") or {}
    name = c.get("cell")
    if name not in cells:
        raise ConfigError(
            "cell",
            f"cell={name!r} is not defined by experiment {c.get('experiment')!r}; choose one of "
            f"{', '.join(sorted(cells)) or 'none (add cells to the experiment)'}.",
        )
    spec = cells[name] or {}
    zoo = c.get("zoo") or {}
    for i, t in enumerate(spec.get("teachers") or []):
        path = f"cells.{name}.teachers[{i}]"
        if t.get("teacher") not in zoo:
            raise ConfigError(
                f"{path}.teacher",
                f"{path}.teacher={t.get('teacher')!r} is not in the zoo ({', '.join(sorted(zoo))}"
                f"); add `- /teacher@zoo.{t.get('teacher')}: FILE` to the experiment's defaults.",
            )
        if t.get("method") not in KD_METHODS:
            raise ConfigError(
                f"{path}.method",
                f"{path}.method={t.get('method')!r} is not a method; use one of "
                f"{', '.join(KD_METHODS)}.",
            )
        weight = t.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(
                f"{path}.weight", f"{path}.weight={weight!r}: set it to a number >= 0."
            )
        if t.get("kd"):
            check_group(f"{path}.kd", t["kd"], KdConf)
    if "train" in spec and not isinstance(spec["train"], bool):
        raise ConfigError(f"cells.{name}.train", f"cells.{name}.train: use true or false.")
    return spec


def validate_eval(cfg: DictConfig | dict[str, Any], *, need_model: bool = True) -> None:
    """Check a ``python -m xbench.evaluate`` config (a suite of conf/eval plus overrides)."""
    c = plain(cfg)
    c.pop("hydra", None)
    _check_eval("", c)
    if need_model:
        model = c.get("model")
        if not model:
            raise ConfigError(
                "model",
                "model is not set: give model=RUN_DIR (an xbench run directory or checkpoint), a "
                "model directory, an offline asset (smollm2) or a Hub id.",
            )
        if Path(str(model)).expanduser().exists():
            return
        check_source("model", str(model), "model", check_hub=True)
        if c.get("tokenizer"):
            check_source("tokenizer", str(c["tokenizer"]), "tokenizer", check_hub=True)


def validate_pair(cfg: DictConfig | dict[str, Any]) -> None:
    """Check a ``python -m xbench.pair`` config (conf/pair.yaml plus overrides)."""
    c = plain(cfg)
    c.pop("hydra", None)
    for f in dataclasses.fields(PairConf):
        if f.name not in c:
            raise ConfigError(f.name, f"{f.name} is missing: start from conf/pair.yaml.")
    # ``teacher`` may be one tokenizer or a list of them (one Table-8 column each).
    teachers = c["teacher"] if isinstance(c["teacher"], list) else [c["teacher"]]
    check_group("", {**c, "teacher": ",".join(map(str, teachers))}, PairConf)
    if not teachers:
        raise ConfigError("teacher", "teacher is empty: name a tokenizer (llama3, qwen3, ...).")
    for side, names in (("student", [c["student"]]), ("teacher", teachers)):
        for name in names:
            if not name:
                raise ConfigError(
                    side, f"{side} is empty: name a tokenizer (llama3, qwen3, smollm2)."
                )
            check_source(side, str(name), "tokenizer", check_hub=True)
