"""Evaluation with lm-evaluation-harness: suites as config, results in the run-dir contract.

``evaluate(model, tokenizer, cfg, out_dir)`` scores an in-memory Hugging Face model (the training
engine calls it between steps); ``evaluate_cfg(cfg)`` first loads a checkpoint directory, Hub id or
offline asset; ``python -m xbench.evaluate`` is a thin Hydra entry point over ``conf/eval``::

    python -m xbench.evaluate --config-name offline_real model=smollm2 limit=20 out_dir=runs/x

The suite config mirrors ``lm_eval.simple_evaluate``'s keyword arguments one to one (``limit``,
``batch_size``, ``gen_kwargs``, seeds, ...). The only structural difference is ``tasks``: a
mapping ``name -> {num_fewshot, metric, filter}`` because the paper fixes the shot count per task
and the leaderboard must name which metric and filter it reads (lm-eval reports several).

Before lm-eval touches any data the task list is checked against the task index: an unknown
name fails with close matches, and a Hub dataset that is not cached while ``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE`` is set fails at once (lm-eval would otherwise spend ~10-30 s retrying).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xbench import CONF_DIR, sources
from xbench.engine.models import check_vocab, load_model, load_tokenizer
from xbench.io import plain, write_json, write_text

__all__ = ["EvalConfigError", "TaskSpec", "evaluate", "evaluate_cfg", "task_specs"]

log = logging.getLogger(__name__)


# lm-eval's `datasets` builders that read local files instead of a Hub repository.
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


class _DropCustomKwargsHint(logging.Filter):
    """Drop lm-eval's per-task "Custom kwargs can be passed to `--metadata`" hint (57x for MMLU)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


_HINT_FILTER = _DropCustomKwargsHint()


class EvalConfigError(ValueError):
    """A suite config, task name, dataset or model/tokenizer pairing that cannot be evaluated."""


@dataclass(frozen=True)
class TaskSpec:
    """One leaderboard entry: an lm-eval task or group, its shot count and the score it reports."""

    name: str
    num_fewshot: int | None
    metric: str
    filter: str = "none"


def task_specs(cfg: Mapping[str, Any]) -> list[TaskSpec]:
    """Parse ``cfg.tasks`` (mapping ``name -> {num_fewshot, metric, filter}``) into specs.

    A top-level ``num_fewshot`` that is not null overrides every task, like ``simple_evaluate``.
    """
    tasks = cfg.get("tasks") or {}
    if not isinstance(tasks, Mapping) or not tasks:
        raise EvalConfigError(
            "Eval config needs `tasks` as a non-empty mapping "
            f"name -> {{num_fewshot, metric, filter}}, got {tasks!r}."
        )
    override = cfg.get("num_fewshot")
    specs = []
    for name, spec in tasks.items():
        spec = spec or {}
        if "metric" not in spec:
            raise EvalConfigError(
                f"Eval task {name!r} must name the `metric` the leaderboard reads."
            )
        shots = override if override is not None else spec.get("num_fewshot")
        specs.append(TaskSpec(str(name), shots, spec["metric"], spec.get("filter") or "none"))
    return specs


def _include_path(cfg: Mapping[str, Any]) -> list[str] | None:
    """Resolve ``task_include`` entries to folders.

    An entry is anything :func:`xbench.sources.task_folder` resolves (``lm_eval:<folder>``, an
    absolute path, a plug-in's folder, a folder of ``xbench/evaluate/tasks``): indexing only the
    folders a suite uses takes ~0.2 s where ``include_defaults`` (all ~14k built-ins) takes 5 s or
    more on a busy CPU.
    """
    inc = cfg.get("task_include")
    if inc is None:
        return None
    paths = []
    for item in [inc] if isinstance(inc, str) else list(inc):
        path = sources.task_folder(item)
        if not path.is_dir():
            raise EvalConfigError(
                f"Task folder {str(path)!r} (task_include={item!r}) does not exist."
            )
        paths.append(str(path))
    return paths


def _metadata(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Task metadata (passed to every ``custom_dataset`` loader), with paths made absolute now.

    Resolving against the caller's working directory here, once, is what keeps relative data paths
    valid when Hydra or submitit later run from a different directory.
    """
    meta = dict(cfg.get("metadata") or {})
    for key, value in meta.items():
        if key.endswith("_dir") and value is not None:
            meta[key] = str(Path(str(value)).expanduser().resolve())
    # Plug-ins pin their data locations now so results.json records the data actually scored.
    return sources.eval_metadata(meta)


def build_task_manager(cfg: Mapping[str, Any]):
    """Build the suite's ``TaskManager`` (its own folders only, unless it asks for built-ins)."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval.api.task").addFilter(_HINT_FILTER)  # adding twice is a no-op
    return TaskManager(
        include_path=_include_path(cfg),
        include_defaults=bool(cfg["include_defaults"]),
        metadata=_metadata(cfg),
    )


def _leaves(tm, name: str, seen: set[str] | None = None) -> list[str]:
    """Expand a task, group or tag name into its leaf task names using the index (no data load)."""
    from lm_eval.tasks._index import Kind

    seen = set() if seen is None else seen
    entry = tm.task_index.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, tm.all_tasks, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "no close match in this suite"
        raise EvalConfigError(
            f"Unknown lm-eval task {name!r} ({hint}); check the suite's `tasks`, `task_include` "
            "and `include_defaults`."
        )
    if name in seen:
        return []
    seen.add(name)
    if entry.kind == Kind.TAG:
        children: list[str] = sorted(entry.tags)
    elif entry.kind == Kind.GROUP:
        raw = entry.cfg.get("task", [])
        # Inline child configs (dicts) that define a new task carry their own data; only named
        # children are expanded and checked.
        children = [c if isinstance(c, str) else c.get("task") for c in raw]
        children = [c for c in children if isinstance(c, str) and c in tm.task_index]
    else:
        return [name]
    return [leaf for child in children if child for leaf in _leaves(tm, child, seen)]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_dataset_cached(path: str, name: str | None) -> bool:
    """Whether a Hub dataset (and config) is in the local ``datasets`` or hub cache."""
    import datasets.config
    from huggingface_hub import constants

    ds_dir = Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___")
    if ds_dir.is_dir() and (name is None or (ds_dir / name).is_dir()):
        return True
    return (Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}").is_dir()


def check_tasks(tm, specs: list[TaskSpec]) -> dict[str, list[str]]:
    """Fail fast on unknown tasks and on Hub datasets that cannot be fetched while offline.

    Args:
        tm: The suite's ``TaskManager``.
        specs: The suite's tasks.

    Returns:
        ``{spec name: [leaf task names]}``.

    Raises:
        EvalConfigError: unknown task, or offline with uncached Hub data (one message naming all).
    """
    leaves = {s.name: _leaves(tm, s.name) for s in specs}
    if not (_env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE")):
        return leaves
    missing: dict[str, list[str]] = {}
    for spec in specs:
        for leaf in leaves[spec.name]:
            cfg = tm.task_index[leaf].cfg or {}
            path, config = cfg.get("dataset_path"), cfg.get("dataset_name")
            if cfg.get("custom_dataset") or not path or path in _LOCAL_BUILDERS:
                continue
            if Path(path).expanduser().exists() or _hub_dataset_cached(path, config):
                continue
            missing.setdefault(path, []).append(leaf)
    if missing:
        what = "; ".join(
            f"{p} (for {', '.join(sorted(t)[:3])}{', ...' if len(t) > 3 else ''})"
            for p, t in sorted(missing.items())
        )
        import datasets.config

        raise EvalConfigError(
            f"Hub datasets not in the local cache ({datasets.config.HF_DATASETS_CACHE}) while "
            f"HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: {what}; run once with Hub access (e.g. "
            f"`python -m xbench.evaluate --config-name SUITE model=ID limit=1` without the offline "
            f"variables) to cache them, or use the offline suites `mini` / `offline_real`."
        )
    return leaves


def _bos_policy(lm, tokenizer) -> dict[str, Any]:
    """Record the configured and the effective BOS handling (what the scores actually saw)."""
    probe = tokenizer("x")["input_ids"]
    add = lm.add_bos_token
    return {
        "add_bos_token": add,
        "tokenizer_adds_bos": bool(probe) and probe[0] == tokenizer.bos_token_id,
        "bos_token": tokenizer.bos_token,
        # HFLM passes add_special_tokens=add_bos_token when set, else the tokenizer decides.
        "effective": bool(add)
        if add is not None
        else bool(probe) and probe[0] == tokenizer.bos_token_id,
    }


def _model_identity(model, tokenizer, name: str | None) -> dict[str, Any]:
    return {
        "name": name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "class": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_rows": model.get_input_embeddings().weight.shape[0],
        "dtype": str(next(model.parameters()).dtype),
        "device": str(next(model.parameters()).device),
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "tokenizer_len": len(tokenizer),
    }


def _score(raw: dict, spec: TaskSpec, num_fewshot: int | None, leaves: list[str]) -> dict[str, Any]:
    """Pick the leaderboard metric of one task or group out of lm-eval's results (0-100 scale)."""
    res = raw["results"].get(spec.name)
    key = f"{spec.metric},{spec.filter}"
    if res is None or key not in res:
        have = sorted(k for k in (res or {}) if "," in k and "_stderr" not in k)
        raise EvalConfigError(
            f"lm-eval produced no {key!r} for task {spec.name!r} (it has {have}); fix the "
            "task's `metric`/`filter` in the suite config."
        )
    stderr = res.get(f"{spec.metric}_stderr,{spec.filter}")
    # Groups have no n-samples entry of their own: count their leaves' scored documents.
    counts = raw.get("n-samples", {})
    n = sum(counts.get(t, {}).get("effective", 0) for t in leaves)
    return {
        "metric": spec.metric,
        "filter": spec.filter,
        "value": 100.0 * float(res[key]),
        "stderr": 100.0 * float(stderr) if isinstance(stderr, int | float) else None,
        "num_fewshot": num_fewshot,
        "n_samples": n,
    }


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so the returned dict equals what results.json holds."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def evaluate(
    model,
    tokenizer,
    cfg: Mapping[str, Any] | DictConfig,
    out_dir: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Run an eval suite on an in-memory Hugging Face causal LM.

    The model is evaluated where it is (its device and dtype) and put back in its previous
    train/eval mode afterwards, so the training engine can call this mid-run.

    Args:
        model: A ``transformers`` causal LM.
        tokenizer: Its tokenizer (checked against the embedding size).
        cfg: A suite config (``conf/eval/<suite>.yaml``).
        out_dir: Run directory; when given, writes ``<out_dir>/eval/results.json`` and, with
            ``log_samples``, ``<out_dir>/eval/samples_<task>.jsonl``. All writes are atomic.
        model_name: Identity recorded in the settings (defaults to ``config._name_or_path``).

    Returns:
        The results.json dict: ``{"lm_eval_version", "settings", "tasks": {name: {"metric",
        "filter", "value" (0-100), "stderr" (0-100 or None), "num_fewshot", "n_samples"}},
        "raw"}``.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    cfg = plain(cfg)
    specs = task_specs(cfg)
    try:
        check_vocab(model, tokenizer, "model")
    except ValueError as err:
        raise EvalConfigError(str(err)) from err
    t0 = time.perf_counter()
    tm = build_task_manager(cfg)
    leaves = check_tasks(tm, specs)

    # Load tasks ourselves so each gets its own shot count (simple_evaluate only has one global
    # num_fewshot); the built Task/Group objects are then handed to simple_evaluate unchanged.
    loaded = tm.load([s.name for s in specs])
    objs: list[Any] = []
    for spec in specs:
        top = loaded["groups"].get(spec.name) or loaded["tasks"].get(spec.name)
        objs.extend([top] if top is not None else [loaded["tasks"][t] for t in leaves[spec.name]])
        if spec.num_fewshot is not None:
            for leaf in leaves[spec.name]:
                loaded["tasks"][leaf].set_config(key="num_fewshot", value=int(spec.num_fewshot))
    t_tasks = time.perf_counter() - t0

    was_training = model.training
    pad_token = tokenizer.pad_token  # HFLM may set a pad token on the caller's tokenizer
    model.eval()
    try:
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=cfg["batch_size"],
            max_batch_size=cfg.get("max_batch_size") or 64,
            add_bos_token=cfg.get("add_bos_token"),
            max_length=cfg.get("max_length"),
        )
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=objs,
            task_manager=tm,
            num_fewshot=None,
            limit=cfg.get("limit"),
            bootstrap_iters=cfg["bootstrap_iters"],
            log_samples=bool(cfg["log_samples"]),
            system_instruction=cfg.get("system_instruction"),
            apply_chat_template=cfg["apply_chat_template"],
            fewshot_as_multiturn=cfg["fewshot_as_multiturn"],
            gen_kwargs=cfg.get("gen_kwargs"),
            random_seed=cfg["random_seed"],
            numpy_random_seed=cfg["numpy_random_seed"],
            torch_random_seed=cfg["torch_random_seed"],
            fewshot_random_seed=cfg["fewshot_random_seed"],
        )
        bos = _bos_policy(lm, tokenizer)
    finally:
        model.train(was_training)
        tokenizer.pad_token = pad_token
    wall = time.perf_counter() - t0

    samples = raw.pop("samples", None) or {}
    n_shot = raw.get("n-shot", {})
    tasks = {}
    for spec in specs:
        shots = n_shot.get(spec.name, spec.num_fewshot)
        tasks[spec.name] = _score(raw, spec, shots, leaves[spec.name])
    filters = {
        t: [f["name"] for f in (c.get("filter_list") or [])] or ["none"]
        for t, c in raw.get("configs", {}).items()
    }
    settings = {
        "suite": cfg.get("suite"),
        "model": _model_identity(model, tokenizer, model_name),
        "tasks": {
            s.name: {"num_fewshot": s.num_fewshot, "metric": s.metric, "filter": s.filter}
            for s in specs
        },
        "n_shot": n_shot,
        "filters": filters,
        "bos": bos,
        "apply_chat_template": cfg["apply_chat_template"],
        "fewshot_as_multiturn": cfg["fewshot_as_multiturn"],
        "system_instruction": cfg.get("system_instruction"),
        "limit": cfg.get("limit"),
        "batch_size": cfg["batch_size"],
        "max_length": lm.max_length,
        "gen_kwargs": cfg.get("gen_kwargs"),
        "seeds": {
            k: cfg.get(k)
            for k in (
                "random_seed",
                "numpy_random_seed",
                "torch_random_seed",
                "fewshot_random_seed",
            )
        },
        "bootstrap_iters": cfg["bootstrap_iters"],
        "task_include": cfg.get("task_include"),
        "metadata": _metadata(cfg),
        "versions": _versions(),
        "timings": {"load_tasks_s": round(t_tasks, 2), "total_s": round(wall, 2)},
    }
    result = _jsonable(
        {"lm_eval_version": lm_eval.__version__, "settings": settings, "tasks": tasks, "raw": raw}
    )
    if out_dir is not None:
        _write(Path(out_dir) / "eval", result, samples)
    log.info(
        "eval %s: %s (%.1f s)",
        cfg.get("suite"),
        {k: round(v["value"], 2) for k, v in tasks.items()},
        wall,
    )
    return result


def _versions() -> dict[str, str]:
    import lm_eval
    import torch
    import transformers

    return {
        "lm_eval": lm_eval.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def _write(eval_dir: Path, result: dict[str, Any], samples: dict[str, list]) -> None:
    """Write samples first and results.json last: results.json present means the eval finished."""
    from lm_eval.utils import handle_non_serializable

    for task, rows in samples.items():
        text = "".join(json.dumps(r, default=handle_non_serializable) + "\n" for r in rows)
        write_text(eval_dir / f"samples_{task}.jsonl", text)
    write_json(eval_dir / "results.json", result)


def load_pretrained(
    name: str, *, tokenizer: str | None = None, device: str = "cpu", dtype: str | None = None
) -> tuple[Any, Any]:
    """A model to score and its tokenizer, through the engine's one loader.

    Args:
        name: A registry asset (``smollm2``), a plug-in source, a ``save_pretrained`` directory
            or a Hub id.
        tokenizer: The tokenizer to use instead of the model's own (needed for checkpoints saved
            without one); any source :mod:`xbench.sources` resolves.
        device: Where to put the model.
        dtype: ``float32``, ``bfloat16``, ... or ``None`` / ``stored`` for the checkpoint's own.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    try:
        # A registry model's tokenizer is the asset of the same name (smollm2).
        tok = load_tokenizer(tokenizer or name)
        spec = {"model": name, "dtype": dtype if dtype not in (None, "auto") else "stored"}
        model = load_model(spec, tok, field="model", device=device)
    except ValueError as err:
        raise EvalConfigError(str(err)) from err
    return model.to(device).eval(), tok


def evaluate_cfg(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """Load ``cfg.model`` (checkpoint dir, Hub id or offline asset) and run :func:`evaluate`.

    Args:
        cfg: A suite config with ``model`` (required), ``tokenizer`` (optional: defaults to the
            model's own), ``dtype`` and ``device`` (where to load it), and ``out_dir`` (optional run
            directory for eval/results.json).

    Returns:
        The results dict of :func:`evaluate`.
    """
    from xbench.engine.checkpoint import load_student, run_dir_of

    cfg = plain(cfg)
    if not cfg.get("model"):
        raise EvalConfigError(
            "evaluate_cfg needs `model`: a run directory, checkpoint directory, Hub id or "
            "offline asset name such as 'smollm2'."
        )
    name = str(cfg["model"])
    if run_dir_of(name) is not None:  # an xbench run directory or one of its step_N.pt
        model, tokenizer, name = load_student(name)
        if cfg.get("tokenizer"):
            raise EvalConfigError(
                "tokenizer is set, but an xbench run directory brings its student's own "
                "tokenizer: drop tokenizer=."
            )
        model = model.to(cfg.get("device") or "cpu")
    else:
        model, tokenizer = load_pretrained(
            name, tokenizer=cfg.get("tokenizer"), device=cfg.get("device") or "cpu",
            dtype=cfg.get("dtype"),
        )  # fmt: skip
    return evaluate(model, tokenizer, cfg, out_dir=cfg.get("out_dir"), model_name=name)


_CONF = CONF_DIR / "eval"


def _config_name(argv: list[str]) -> tuple[str, list[str]]:
    """``--config-name SUITE`` (or ``-cn SUITE``, ``--config-name=SUITE``) and the rest."""
    name, rest, it = "mini", [], iter(argv)
    for a in it:
        if a in ("--config-name", "-cn"):
            name = next(it, name)
        elif a.startswith("--config-name="):
            name = a.split("=", 1)[1]
        else:
            rest.append(a)
    return name, rest


def _quote_path(arg: str) -> str:
    """``model=results/sweeps/x/cell=ce`` -> ``model='results/sweeps/x/cell=ce'``.

    Sweep run directories are named ``key=value``; Hydra's override grammar needs such a value
    quoted, which a user should not have to know to evaluate one.
    """
    key, sep, value = arg.partition("=")
    if sep and key in ("model", "tokenizer", "out_dir") and value and value[0] not in "'\"":
        return f"{key}='{value}'" if "'" not in value else arg
    return arg


def _help() -> str:
    from xbench.config.cli import catalogue

    return (
        "usage: python -m xbench.evaluate [--config-name SUITE] model=MODEL [key=value ...]\n"
        "  MODEL: an xbench run directory (or its checkpoints/step_N.pt), a save_pretrained\n"
        "  directory, an offline asset (smollm2) or a Hub id; out_dir=DIR writes\n"
        "  DIR/eval/results.json. Keys mirror lm_eval.simple_evaluate (conf/eval/_common.yaml).\n"
        + catalogue(experiments=False)
    )


def _cli(argv: list[str]) -> int:
    from xbench.config import validate_eval
    from xbench.config.cli import compose, guard, strip_flags

    name, rest = _config_name(argv)
    rest = [_quote_path(a) for a in rest]
    if name not in {p.stem for p in _CONF.glob("*.yaml") if not p.stem.startswith("_")}:
        from xbench.config import ConfigError

        suites = sorted(p.stem for p in _CONF.glob("*.yaml") if not p.stem.startswith("_"))
        raise ConfigError(
            "--config-name", f"--config-name={name!r} is not a suite; use one of {suites}."
        )
    validate_eval(compose(name, strip_flags(rest), config_dir=_CONF))
    import hydra

    # Nothing on disk but out_dir: no outputs/<date>/ folder, no .hydra/, no log file.
    sys.argv = [
        sys.argv[0],
        "--config-name",
        name,
        *rest,
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]

    @hydra.main(config_path=str(_CONF), config_name="mini", version_base="1.3")
    def _run(cfg: DictConfig) -> None:
        with guard("xbench.evaluate", EvalConfigError):
            result = evaluate_cfg(cfg)
        print(json.dumps(result["tasks"], indent=2))

    _run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xbench.evaluate [--config-name SUITE] model=... [key=value ...]``."""
    from xbench.config.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("xbench.evaluate", argv, _cli, _help)
