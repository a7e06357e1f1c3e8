"""Every experiment composes, every cell resolves, and bad cells fail with one clear sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from xbench.config.cells import resolve_cell
from xbench.rundir import config_hash

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("sweep", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_and_cell_composes(experiment: str) -> None:
    cfg = _compose(f"+experiment={experiment}")
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False)
    assert params and "cell" in params, f"{experiment} sweeps no cells"
    swept = str(params["cell"]).split(",")
    for cell in swept:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            c = compose("sweep", overrides=[f"+experiment={experiment}", f"cell={cell}"])
        resolved, identity = resolve_cell(c)
        assert identity["name"] == cell
        assert len(resolved.teachers) == len(c.cells[cell].teachers)
        assert "cells" not in resolved and "zoo" not in resolved
        assert len(config_hash(resolved)) == 16


def test_unknown_cell_names_the_choices() -> None:
    cfg = _compose("+experiment=mini_smoke", "cell=nope")
    with pytest.raises(ValueError, match=r"cell='nope' is not defined .* choose one of .*kd-C"):
        resolve_cell(cfg)


def test_bad_method_and_teacher_are_named() -> None:
    cfg = _compose(
        "+experiment=mini_smoke", "cell=x", "+cells.x.teachers=[{teacher: tiny_C, method: kl}]"
    )
    with pytest.raises(ValueError, match=r"cells\.x\.teachers\[0\]\.method='kl'"):
        resolve_cell(cfg)
    cfg = _compose(
        "+experiment=mini_smoke", "cell=x", "+cells.x.teachers=[{teacher: zz, method: kd}]"
    )
    with pytest.raises(ValueError, match=r"teacher='zz' is not in the zoo"):
        resolve_cell(cfg)


def test_hash_ignores_launch_settings_but_not_hyperparameters() -> None:
    a = resolve_cell(_compose("+experiment=mini_smoke", "cell=pkl-A"))[0]
    b = resolve_cell(
        _compose(
            "+experiment=mini_smoke", "cell=pkl-A", "out_root=/elsewhere", "resources.timeout_min=5"
        )
    )[0]
    c = resolve_cell(_compose("+experiment=mini_smoke", "cell=pkl-A", "kd.rank=2"))[0]
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_method_labels() -> None:
    labels = {
        cell: resolve_cell(_compose("+experiment=mini_smoke", f"cell={cell}"))[1]["method"]
        for cell in ("base", "ce", "kd-C", "kd-C+pkl-A")
    }
    assert labels == {"base": "base", "ce": "ce", "kd-C": "kd", "kd-C+pkl-A": "kd+pkl"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_the_debug_profile(experiment: str) -> None:
    cfg = _compose(f"+experiment={experiment}", "+debug=ci")
    assert cfg.train.steps == 3 and cfg.eval.limit == 4
    first = str(OmegaConf.to_container(cfg.hydra.sweeper.params)["cell"]).split(",")[0]
    resolve_cell(_compose(f"+experiment={experiment}", "+debug=ci", f"cell={first}"))
