"""From a sweep config to one cell: resolve its teachers from the zoo and label it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from xbench.vocab import KD_METHODS, USES_W


def cell_spec(cfg: DictConfig) -> dict[str, Any]:
    """The ``cells[cell]`` entry of the experiment, validated."""
    name = str(cfg.cell)
    if name not in cfg.cells:
        known = ", ".join(sorted(cfg.cells))
        raise ValueError(f"cell={name!r} is not defined by this experiment; choose one of {known}.")
    spec = OmegaConf.to_container(cfg.cells[name], resolve=True)
    assert isinstance(spec, dict)
    for i, t in enumerate(spec.get("teachers") or []):
        if t.get("teacher") not in cfg.zoo:
            raise ValueError(
                f"cells.{name}.teachers[{i}].teacher={t.get('teacher')!r} is not in the zoo; "
                f"add `- /teacher@zoo.{t.get('teacher')}: FILE` to the experiment's defaults."
            )
        if t.get("method") not in KD_METHODS:
            raise ValueError(
                f"cells.{name}.teachers[{i}].method={t.get('method')!r}; use one of {KD_METHODS}."
            )
    return spec


def resolve_cell(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """The config one job trains with, and the cell's identity for meta.json / leaderboards.

    The grid (``cells``) and the ``zoo`` are dropped from the resolved config so that adding a
    cell to an experiment does not change the config hash of the cells already finished.
    """
    spec = cell_spec(cfg)
    teachers = []
    for t in spec.get("teachers") or []:
        entry = OmegaConf.to_container(cfg.zoo[t["teacher"]], resolve=True)
        assert isinstance(entry, dict)
        entry.update({"method": t["method"], "weight": float(t.get("weight", 1.0))})
        entry["kd"] = t.get("kd", {})
        teachers.append(entry)
    kept = [k for k in cfg if k not in ("cells", "zoo", "hydra")]
    out = OmegaConf.to_container(OmegaConf.masked_copy(cfg, kept), resolve=True)
    assert isinstance(out, dict)
    out["teachers"] = teachers
    train_enabled = bool(spec.get("train", True)) and bool(cfg.train.enabled)
    out["train"]["enabled"] = train_enabled
    resolved = OmegaConf.create(out)
    with open_dict(resolved):
        resolved.method = method_label(spec, train_enabled)
    identity = {
        "name": str(cfg.cell),
        "student": str(cfg.student.name),
        "teachers": "+".join(str(t["name"]) for t in teachers) or "none",
        "method": resolved.method,
        "alpha": float(cfg.kd.alpha) if _uses(teachers, "xtoken") else None,
        "rank": int(cfg.kd.rank) if _uses(teachers, *USES_W) else None,
        # Which formula set produced the cell (xbench.losses.presets); none without a teacher.
        "semantics": str(cfg.kd.semantics) if teachers else None,
        "seed": int(cfg.seed),
    }
    return resolved, identity


def method_label(spec: dict[str, Any], train_enabled: bool) -> str:
    """``base`` (no training), the cell's ``label`` if it has one, ``ce`` (no teacher), or teacher
    methods joined with ``+``."""
    if not train_enabled:
        return "base"
    if spec.get("label"):  # a variant of a method (e.g. one loss term alone) gets its own row
        return str(spec["label"])
    teachers = spec.get("teachers") or []
    return "+".join(t["method"] for t in teachers) if teachers else "ce"


def _uses(teachers: list[dict[str, Any]], *methods: str) -> bool:
    return any(t["method"] in methods for t in teachers)
