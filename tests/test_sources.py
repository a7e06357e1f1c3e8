"""One registry for every source: the miniature world arrives as a plug-in, and a new plug-in is
found by the engine's loader, the corpus reader and config validation alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from xbench import sources
from xbench.config.validate import ConfigError, check_source
from xbench.engine.data import load_texts
from xbench.engine.models import load_tokenizer


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> sources.Plugin:
    """A throwaway plug-in ``toy:`` registered for one test."""
    monkeypatch.setattr(sources, "_REGISTRY", dict(sources.plugins()))
    sentinel = object()
    plugin = sources.Plugin(
        scheme="toy",
        tokenizer=lambda name: (sentinel, name),
        model_path=lambda name: Path("/nonexistent") / name,
        names=lambda kind: ["a", "b"],
        corpus=lambda cfg: ["one doc", "  ", "two doc"],
        task_dirs={"toy_tasks": Path("/somewhere/toy")},
    )
    sources.register(plugin)
    return plugin


def test_the_miniature_world_is_found_as_a_plugin() -> None:
    plugin, name = sources.split("mini:digits")
    assert plugin is not None and plugin.scheme == "mini" and name == "digits"
    assert sources.task_folder("mini") == Path(plugin.task_dirs["mini"])
    assert sources.split("Qwen/Qwen3-4B") == (None, "Qwen/Qwen3-4B")  # a Hub id has no scheme


def test_a_new_plugin_serves_every_layer(toy: sources.Plugin) -> None:
    _, name = load_tokenizer("toy:a")  # the engine's one loader asks the registry
    assert name == "a"
    texts = load_texts(OmegaConf.create({"source": "toy", "max_docs": None}))
    assert texts == ["one doc", "two doc"]  # blank documents dropped as for every corpus
    assert sources.task_folder("toy_tasks") == Path("/somewhere/toy")
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.model='toy:c': the toy plug-in has"):
        check_source("teachers[0].model", "toy:c", "model", check_hub=True)
    check_source("teachers[0].model", "toy:b", "model", check_hub=True)


def test_a_scheme_registers_once(toy: sources.Plugin) -> None:
    sources.register(toy)  # the same object again is fine
    with pytest.raises(ValueError, match="'toy' is already registered"):
        sources.register(sources.Plugin("toy", toy.tokenizer, toy.model_path, toy.names))


def test_a_plugin_that_cannot_load_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_REGISTRY", {})
    monkeypatch.setattr(sources, "_DISCOVERED", False)
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench.no_such_module:PLUGIN")
    with pytest.raises(RuntimeError, match=r"XBENCH_PLUGINS='xbench.no_such_module:PLUGIN'"):
        sources.plugins()
