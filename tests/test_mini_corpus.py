"""The synthetic arithmetic corpus: deterministic, well-formed, correct, learnable-sized."""

from __future__ import annotations

import json
import re

from xbench.mini import corpus

_STEP = re.compile(r"^(\d+) ([+\-*]) (\d+) = (\d+)$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def test_deterministic_and_prefix_stable() -> None:
    assert corpus.make_problems(50, 7) == corpus.make_problems(50, 7)
    assert corpus.make_problems(80, 7)[:50] == corpus.make_problems(50, 7)
    assert corpus.make_problems(50, 7) != corpus.make_problems(50, 8)
    assert corpus.filler_text(20, 3) == corpus.filler_text(20, 3)


def test_gsm8k_format_and_arithmetic() -> None:
    problems = corpus.make_problems(500, 0)
    assert len({p["question"] for p in problems}) == 500
    digit_counts = set()
    for p in problems:
        *steps, final = p["answer"].split("\n")
        assert final.startswith("#### ")
        assert p["question"].endswith("?")
        assert len(p["question"]) < 160  # short: a tiny model sees ~100 tokens per example
        previous = None
        for step in steps:
            m = _STEP.match(step)
            assert m, step
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert _OPS[op](a, b) == c
            # Two-step problems reuse the intermediate result.
            assert previous is None or a == previous
            previous = c
        assert int(final[5:]) == previous == corpus.final_answer(p["answer"])
        for number in re.findall(r"\d+", p["question"] + p["answer"]):
            assert len(number) <= 4
            digit_counts.add(len(number))
    assert digit_counts == {1, 2, 3, 4}
    ops = {s.split()[1] for p in problems for s in p["answer"].split("\n")[:-1]}
    assert ops == {"+", "-", "*"}


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
    paths = corpus.write_split(tmp_path / "d", n_train=40, n_test=10, seed=5)
    first = {k: p.read_bytes() for k, p in paths.items()}
    train = [json.loads(line) for line in first["train"].decode().splitlines()]
    test = corpus.read_jsonl(paths["test"])
    assert (len(train), len(test)) == (40, 10)
    assert set(train[0]) == {"question", "answer"}
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    corpus.write_split(tmp_path / "d", n_train=40, n_test=10, seed=5)
    assert {k: p.read_bytes() for k, p in paths.items()} == first
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["test.jsonl", "train.jsonl"]
