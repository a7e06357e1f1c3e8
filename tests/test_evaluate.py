"""Evaluation through lm-eval: the offline mini suite end to end, config composition, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from xbench import sources
from xbench.engine.models import check_vocab
from xbench.evaluate import harness as ev
from xbench.io import read_jsonl
from xbench.mini.corpus import make_problems, write_split

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["mini", "paper", "offline_real"]


def suite(name: str, *overrides: str) -> dict:
    """Compose conf/eval/<name>.yaml as a primary config, like `python -m xbench.evaluate`."""
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "eval"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=name, overrides=list(overrides)))


@pytest.fixture(scope="module")
def tiny() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A 2-layer, hidden-64 Llama and a 400-token byte-level BPE trained on the corpus here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [f"Question: {p['question']}\nAnswer: {p['answer']}" for p in make_problems(300, 9)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config), tok


def _tiny_llama(vocab: int) -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )


@pytest.mark.parametrize("name", SUITES)
def test_suites_compose_as_primary_and_as_group(name: str) -> None:
    cfg = suite(name)
    specs = ev.task_specs(cfg)
    assert cfg["suite"] == name and specs
    assert all(s.metric and s.filter for s in specs)
    # The same file as the `eval` group of a run config.
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        run = compose(overrides=[f"+eval={name}"])
    assert OmegaConf.to_container(run.eval) == cfg


def test_paper_suite_is_the_papers_protocol() -> None:
    specs = {s.name: s for s in ev.task_specs(suite("paper"))}
    assert set(specs) == {"mmlu", "gsm8k", "hendrycks_math", "winogrande", "hellaswag"}
    assert {s.num_fewshot for s in specs.values()} == {3}
    assert (specs["gsm8k"].metric, specs["gsm8k"].filter) == ("exact_match", "strict-match")
    assert specs["hellaswag"].metric == "acc_norm"


def test_mini_suite_end_to_end(tiny, tmp_path, monkeypatch) -> None:
    model, tok = tiny
    write_split(tmp_path / "data", n_train=30, n_test=12, seed=3)
    # A relative data path must survive a later change of working directory (Hydra, submitit).
    monkeypatch.chdir(tmp_path)
    cfg = suite("mini", "limit=6", "log_samples=true", "metadata.mini_data_dir=data")
    model.train()
    result = ev.evaluate(model, tok, cfg, out_dir=tmp_path / "run")
    assert model.training  # mode restored for the training loop

    on_disk = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert on_disk == result
    assert set(result) == {"lm_eval_version", "settings", "tasks", "raw"}
    arith, mc = result["tasks"]["mini_arith"], result["tasks"]["mini_arith_mc"]
    assert (arith["metric"], arith["filter"]) == ("exact_match", "strict-match")
    assert arith["num_fewshot"] == 3
    assert (mc["metric"], mc["filter"]) == ("acc", "none")
    for entry in (arith, mc):
        assert 0.0 <= entry["value"] <= 100.0 and entry["n_samples"] == 6
    settings = result["settings"]
    assert settings["metadata"]["mini_data_dir"] == str(tmp_path / "data")
    assert settings["filters"]["mini_arith"] == ["strict-match", "flexible-extract"]
    assert settings["n_shot"] == {"mini_arith": 3, "mini_arith_mc": 3, "mini_answer": 0}
    answer = result["tasks"]["mini_answer"]
    assert (answer["metric"], answer["filter"]) == ("answer_prob", "none") and answer[
        "n_samples"
    ] == 6
    assert settings["limit"] == 6 and settings["apply_chat_template"] is False
    assert settings["bos"]["add_bos_token"] is None and "effective" in settings["bos"]
    assert settings["model"]["tokenizer_len"] == len(tok)
    assert result["lm_eval_version"] == settings["versions"]["lm_eval"]
    # Exact match per answer length: the 6 docs of the stratified split cover all four classes.
    raw_arith = result["raw"]["results"]["mini_arith"]
    for k in (1, 2, 3, 4):
        assert 0.0 <= raw_arith[f"exact_match@len{k},strict-match"] <= 1.0

    # The prompts are GSM8K's, over the configured test split, with 3 shots.
    rows = [json.loads(x) for x in (tmp_path / "run/eval/samples_mini_arith.jsonl").open()]
    test_questions = [r["question"] for r in read_jsonl(tmp_path / "data" / "test.jsonl")]
    assert rows[0]["doc"]["question"] in test_questions
    prompt = rows[0]["arguments"][0][0]
    assert prompt.count("Question: ") == 4 and prompt.endswith("Answer:")
    assert (tmp_path / "run/eval/samples_mini_arith_mc.jsonl").is_file()


def test_per_task_and_global_num_fewshot(tiny, tmp_path) -> None:
    model, tok = tiny
    write_split(tmp_path, n_train=20, n_test=4, seed=1)
    cfg = suite(
        "mini",
        "limit=2",
        "~tasks.mini_arith",
        "~tasks.mini_answer",
        "tasks.mini_arith_mc.num_fewshot=1",
        f"metadata.mini_data_dir={tmp_path}",
        "bootstrap_iters=0",
    )
    result = ev.evaluate(model, tok, cfg)
    assert result["tasks"]["mini_arith_mc"]["num_fewshot"] == 1
    assert result["tasks"]["mini_arith_mc"]["stderr"] is None  # bootstrap off
    cfg["num_fewshot"] = 0
    assert ev.evaluate(model, tok, cfg)["settings"]["n_shot"] == {"mini_arith_mc": 0}


def test_unknown_task_lists_close_matches(tiny) -> None:
    cfg = suite("mini", "+tasks.mini_arth={metric: acc}")
    with pytest.raises(ev.EvalConfigError, match=r"mini_arth.*close matches: mini_arith"):
        ev.evaluate(*tiny, cfg)


def test_paper_suite_fails_fast_offline(tiny, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ev.EvalConfigError) as err:
        ev.evaluate(*tiny, suite("paper"))
    message = str(err.value)
    for dataset in ("cais/mmlu", "openai/gsm8k", "allenai/winogrande", "Rowan/hellaswag"):
        assert dataset in message
    assert "offline_real" in message and "\n" not in message
    # Index of the built-in tasks only; lm-eval's own offline failure takes ~10-30 s.
    assert time.perf_counter() - start < 30


def test_vocab_mismatch(tiny) -> None:
    _, tok = tiny
    cfg = suite("mini")
    small = _tiny_llama(100)
    with pytest.raises(ev.EvalConfigError, match=r"embedding has 100 rows.*400 tokens"):
        ev.evaluate(small, tok, cfg)
    foreign = _tiny_llama(4096)
    with pytest.raises(ev.EvalConfigError, match="4096 rows"):
        ev.evaluate(foreign, tok, cfg)
    padded = _tiny_llama(512)
    check_vocab(padded, tok, "model")  # padding up to the next multiple of 1024 is normal


def test_missing_metric_is_named() -> None:
    raw = {"results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1}}, "n-samples": {}}
    spec = ev.TaskSpec("t", 3, "exact_match", "strict-match")
    with pytest.raises(ev.EvalConfigError, match=r"exact_match,strict-match.*acc,none"):
        ev._score(raw, spec, 3, ["t"])
    good = ev._score(raw, ev.TaskSpec("t", 3, "acc"), 3, ["t"])
    assert good["value"] == pytest.approx(50.0) and good["stderr"] == pytest.approx(10.0)


def test_offline_real_tasks_match_lm_eval_builtins() -> None:
    """Same prompts, targets, filters, metrics and generation settings as the Hub versions."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    builtin = Path(lm_eval.tasks.__file__).parent
    ours = sources.TASKS_DIR / "offline_real"
    keys = [
        "output_type",
        "doc_to_text",
        "doc_to_target",
        "doc_to_choice",
        "metric_list",
        "generation_kwargs",
        "filter_list",
        "repeats",
        "fewshot_config",
    ]
    pairs = [
        (builtin / "gsm8k" / "gsm8k.yaml", ours / "gsm8k_offline.yaml"),
        (builtin / "mmlu/default/mmlu_anatomy.yaml", ours / "mmlu_offline_anatomy.yaml"),
    ]
    for ref_path, our_path in pairs:
        ref = load_yaml(ref_path, resolve_func=False)
        mine = load_yaml(our_path, resolve_func=False)
        assert {k: ref.get(k) for k in keys} == {k: mine.get(k) for k in keys}, our_path.name
    subjects = sorted(p.stem[5:] for p in (builtin / "mmlu/default").glob("mmlu_*.yaml"))
    group = yaml.safe_load((ours / "mmlu_offline.yaml").read_text())
    assert group["task"] == [f"mmlu_offline_{s}" for s in subjects]
    for s in subjects:
        ref = load_yaml(builtin / f"mmlu/default/mmlu_{s}.yaml", resolve_func=False)
        mine = load_yaml(ours / f"mmlu_offline_{s}.yaml", resolve_func=False)
        assert mine["description"] == ref["description"]


def test_cli_on_a_saved_checkpoint(tiny, tmp_path) -> None:
    """`python -m xbench.evaluate` loads a checkpoint dir and writes the run-dir contract."""
    model, tok = tiny
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    write_split(tmp_path / "data", n_train=20, n_test=4, seed=2)
    cmd = [
        sys.executable,
        "-m",
        "xbench.evaluate",
        "--config-name",
        "mini",
        f"model={tmp_path / 'ckpt'}",
        f"out_dir={tmp_path / 'run'}",
        "limit=2",
        "~tasks.mini_arith",
        f"metadata.mini_data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "run/eval/results.json").read_text())
    assert result["settings"]["model"]["name"] == str(tmp_path / "ckpt")
    assert result["tasks"]["mini_arith_mc"]["n_samples"] == 2


def test_mini_scores_are_fractions() -> None:
    """lm-eval metrics are fractions; xbench.evaluate alone turns them into percent."""
    from xbench.mini.tasks import utils

    doc = {"question": "How many eggs does Tom have?", "answer": "Tom has 4517 eggs.\n#### 4517"}
    assert utils.process_answer(doc, [(math.log(0.25), False)]) == {"answer_prob": 0.25, "acc": 0.0}
    assert utils.process_generation(doc, ["4,517"]) == {
        "exact_match": 1.0,
        "exact_match@len4": 1.0,
    }
    assert utils.process_generation(doc, ["[invalid]"])["exact_match@len4"] == 0.0
