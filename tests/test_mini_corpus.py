"""The synthetic corpus: deterministic, well-formed, answers true to the fact table, stratified."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from xbench.io import read_jsonl
from xbench.mini import corpus

_ANSWER = re.compile(r"^#### (\d+)$")


def test_deterministic_and_prefix_stable() -> None:
    assert corpus.make_problems(50, 7) == corpus.make_problems(50, 7)
    assert corpus.make_problems(80, 7)[:50] == corpus.make_problems(50, 7)
    assert corpus.make_problems(50, 7) != corpus.make_problems(50, 8)
    assert corpus.filler_text(20, 3) == corpus.filler_text(20, 3)


def _key(question: str) -> tuple[str, str]:
    # Every phrasing ends in the fact's key, "<name>'s <item>" and one punctuation mark.
    name, item = question[:-1].rsplit(" ", 2)[-2:]
    return name.removesuffix("'s"), item


def test_answers_follow_the_fact_table() -> None:
    table = {(f["name"], f["item"]): f["value"] for f in corpus.facts(0)}
    assert len(table) == 144
    problems = corpus.make_problems(1152, 0)
    assert len({p["question"] for p in problems}) == 1152
    for p in problems:
        m = _ANSWER.match(p["answer"])
        assert m, p["answer"]
        assert int(m[1]) == table[_key(p["question"])] == corpus.final_answer(p["answer"])
        assert not any(c.isdigit() for c in p["question"])  # closed book: the number is recalled
    # Every fact is trained in 8 phrasings.
    assert set(Counter(_key(p["question"]) for p in problems).values()) == {8}
    with pytest.raises(ValueError, match="training pool"):
        corpus.make_problems(1153, 0)


def test_test_split_is_held_out_and_stratified() -> None:
    train = corpus.make_problems(1152, 0)
    test = corpus.held_out_problems(576, 0)
    assert not {p["question"] for p in test} & {p["question"] for p in train}
    # Every fact is asked in 4 phrasings its training documents do not use, and every phrasing
    # of the test split occurs in training (with other facts).
    assert set(Counter(_key(p["question"]) for p in test).values()) == {4}
    shape = {p["question"].replace("{}'s {}".format(*_key(p["question"])), "K") for p in train}
    assert {
        p["question"].replace("{}'s {}".format(*_key(p["question"])), "K") for p in test
    } <= shape
    lengths = Counter(corpus.answer_digits(p["answer"]) for p in test)
    assert lengths == {1: 144, 2: 144, 3: 144, 4: 144}
    # Any prefix that is a multiple of 4 is stratified too (the profiles use short splits).
    assert Counter(corpus.answer_digits(p["answer"]) for p in test[:20]) == {
        k: 5 for k in (1, 2, 3, 4)
    }
    with pytest.raises(ValueError, match="multiple of 4"):
        corpus.held_out_problems(30, 0)


def test_multiple_choice_items() -> None:
    problems = corpus.make_problems(200, 1)
    items = corpus.make_mc_problems(200, 1)
    labels = set()
    for p, item in zip(problems, items, strict=True):
        assert item == corpus.to_multiple_choice(p)  # order-independent, seeded by the question
        assert len(item["choices"]) == len(set(item["choices"])) == 4
        assert item["choices"][item["label"]] == str(corpus.final_answer(p["answer"]))
        assert all(int(c) >= 0 for c in item["choices"])
        labels.add(item["label"])
    assert labels == {0, 1, 2, 3}


def test_filler_has_no_digits() -> None:
    sentences = corpus.filler_text(100, 0)
    assert len(sentences) == 100
    assert all(s.endswith(".") and not re.search(r"\d", s) for s in sentences)


def test_write_split_disjoint_and_reproducible(tmp_path) -> None:
    paths = corpus.write_split(tmp_path / "d", n_train=40, n_test=12, seed=5)
    first = {k: p.read_bytes() for k, p in paths.items()}
    train = [json.loads(line) for line in first["train"].decode().splitlines()]
    test = read_jsonl(paths["test"])
    assert (len(train), len(test)) == (40, 12)
    assert set(train[0]) == {"question", "answer"}
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    corpus.write_split(tmp_path / "d", n_train=40, n_test=12, seed=5)
    assert {k: p.read_bytes() for k, p in paths.items()} == first
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["test.jsonl", "train.jsonl"]
