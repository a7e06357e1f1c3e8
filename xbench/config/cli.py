"""What every ``python -m xbench.<verb>`` shares: pre-flight composition, one-line errors, --help.

An entry point composes its config with Hydra's compose API and validates it *before* Hydra's
own ``@hydra.main`` runs, so a bad input creates no output directory, no run directory and no
log file. User errors print one line (``xbench.<verb>: error: <sentence>``) and exit 2;
``XBENCH_DEBUG=1`` prints the full traceback as well.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xbench import CONF_DIR, sources
from xbench.config.validate import ConfigError, plain_job
from xbench.errors import UserError

CONF = CONF_DIR
EXIT_USAGE = 2


def one_line(exc: BaseException) -> str:
    """Hydra / OmegaConf / xbench error text as one line (its cause appended when informative)."""
    lines, options, skip = [], [], False
    for raw in str(exc).splitlines():
        line = raw.strip()
        if line.startswith(("Config search path", "full_key:", "object_type", "reference_type")):
            skip = line.startswith("Config search path")
            continue
        if skip or not line:
            continue
        if raw.startswith("\t"):  # Hydra's "Available options in 'student':" list
            options.append(line)
            continue
        if line.startswith("Available options"):
            line = "; a" + line[1:]
        lines.append(line)
    text = " ".join(lines).replace(" ; a", "; a")
    override = getattr(exc, "override", None)  # Hydra's OverrideParseException
    if isinstance(override, str):
        text = f"cannot parse {override!r}: {text}"
    if options:
        text = f"{text} {', '.join(options)}."
    cause = exc.__cause__ or exc.__context__
    if cause is not None and not isinstance(exc, ConfigError | UserError):
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if first and first not in text:
            text = f"{text} ({first})"
    return text or type(exc).__name__


def _debug() -> bool:
    return os.environ.get("XBENCH_DEBUG", "").lower() in ("1", "true", "yes")


def fail(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr (plus the traceback under XBENCH_DEBUG=1)."""
    if _debug():
        traceback.print_exception(exc)
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input", caught by the entry points."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (ConfigError, UserError, HydraException, OmegaConfBaseException)


def run_cli(
    prog: str, argv: list[str], body: Callable[[list[str]], int], help_text: Callable[[], str]
) -> int:
    """``--help`` prints ``help_text()``; user errors from ``body(argv)`` print one line, exit 2."""
    if any(a in ("--help", "-h") for a in argv):
        print(help_text())
        return 0
    try:
        return body(argv)
    except user_errors() as exc:
        return fail(prog, exc)


@contextmanager
def guard(prog: str, *extra: type[BaseException]) -> Iterator[None]:
    """Inside a Hydra task function: a user error (or one of ``extra``) exits 2 with one line."""
    try:
        yield
    except (*user_errors(), *extra) as exc:
        sys.exit(fail(prog, exc))


def compose(
    config_name: str,
    overrides: list[str],
    *,
    config_dir: Path | None = CONF,
    hydra_cfg: bool = False,
) -> DictConfig:
    """Compose ``config_name`` with ``overrides`` as ``@hydra.main`` would, writing nothing."""
    from hydra import compose as hydra_compose
    from hydra import initialize, initialize_config_dir

    # config_dir=None: the config lives in Hydra's ConfigStore only (xbench.pair).
    init = (
        initialize(config_path=None, version_base="1.3")
        if config_dir is None
        else initialize_config_dir(config_dir=str(config_dir), version_base="1.3")
    )
    with init:
        return hydra_compose(config_name, overrides=overrides, return_hydra_config=hydra_cfg)


def sweep_configs(overrides: list[str]) -> list[dict[str, Any]]:
    """The config of every job of a multirun, as plain resolved dicts (``hydra`` kept apart).

    Jobs are the experiment's ``hydra.sweeper.params`` crossed with the command line's sweep
    overrides (``cell=a,b seed=0,1``), as Hydra's basic sweeper makes them. Composing costs
    ~0.2-1 s a job, so when every swept key is a plain value (not a config group, no ``+``/``~``),
    the base config is composed once and each job's values are set on a copy of it.
    """
    import copy

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = compose("sweep", fixed, hydra_cfg=True)
    given = {o.get_key_element() for o in parsed}
    params = OmegaConf.to_container(base.hydra.sweeper.params or {}, resolve=False)
    assert isinstance(params, dict)
    extra = [f"{k}={v}" for k, v in params.items() if k not in given]
    swept = [o for o in parser.parse_overrides([*overrides, *extra]) if o.is_sweep_override()]
    all_overrides = parser.parse_overrides([*fixed, *(o.input_line for o in swept)])
    jobs = [job for batch in BasicSweeper.split_arguments(all_overrides, None) for job in batch]
    simple = all(
        o.type == OverrideType.CHANGE and not (CONF / o.key_or_group).is_dir() for o in swept
    )
    if not simple:
        return [plain_job(compose("sweep", job, hydra_cfg=True)) for job in jobs]
    plain = plain_job(base)
    out = []
    for job in jobs:
        cfg = copy.deepcopy(plain)
        for o in parser.parse_overrides(job[len(fixed) :]):
            _set(cfg, o.key_or_group, o.value())
        out.append(cfg)
    return out


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise ConfigError(dotted, f"{dotted} is not a config field; check the spelling.")
        node = node[key]
    if leaf not in node:
        raise ConfigError(dotted, f"{dotted} is not a config field; check the spelling.")
    node[leaf] = value


def strip_flags(argv: list[str]) -> list[str]:
    """The ``key=value`` overrides of a command line (Hydra's own ``--flags`` are left out)."""
    return [a for a in argv if not a.startswith("-")]


# --------------------------------------------------------------------------- --help


def _experiments() -> dict[str, dict[str, Any]]:
    import yaml

    out = {}
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        swept = str(
            ((doc.get("hydra") or {}).get("sweeper") or {}).get("params", {}).get("cell", "")
        )
        out[path.stem] = {"cells": list(doc.get("cells") or {}), "swept": swept.split(",")}
    return out


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def catalogue(*, experiments: bool = True) -> str:
    """What a user can name: experiments and their cells, methods, assets, eval suites."""
    from xbench.assets import OFFLINE_MODELS, OFFLINE_TOKENIZERS
    from xbench.config.schema import KD_METHODS

    lines = []
    if experiments:
        lines.append("experiments (+experiment=NAME) and their cells (cell=NAME; * = swept):")
        for name, info in _experiments().items():
            cells = " ".join(c + ("*" if c in info["swept"] else "") for c in info["cells"])
            lines.append(f"  {name:20s} {cells}")
    suites = []
    for suite in _names("eval"):
        import yaml

        doc = yaml.safe_load((CONF / "eval" / f"{suite}.yaml").read_text()) or {}
        suites.append(f"  {suite:20s} {' '.join(doc.get('tasks') or {})}")
    lines += [
        f"methods (cells.NAME.teachers[i].method): {', '.join(KD_METHODS)}; a cell without "
        "teachers trains with CE only (ce), train: false only evaluates (base)",
        f"students (student=NAME): {', '.join(_names('student'))}",
        f"teachers (- /teacher@zoo.NAME: FILE): {', '.join(_names('teacher'))}",
        f"offline tokenizer assets: {', '.join(OFFLINE_TOKENIZERS)}; offline models: "
        f"{', '.join(OFFLINE_MODELS)}; plug-in sources: "
        + ", ".join(f"{s}:NAME" for s in sources.plugins()),
        "eval suites (eval=NAME in a cell, --config-name NAME for xbench.evaluate) and tasks:",
        *suites,
        "XBENCH_DEBUG=1 prints the full traceback of an error.",
    ]
    return "\n".join(lines)
