"""Deterministic synthetic corpus for the miniature study: closed-book GSM8K-format questions.

The miniature world holds a fixed table of 144 facts, one count per (person, item) pair (Tom has
4517 pencils). Every document asks for one fact in one of twelve phrasings and answers it with
GSM8K's final-answer line::

    {"question": "How many are Tom's pencils?", "answer": "#### 4517"}

Each fact is trained in eight phrasings and tested in the other four (which four alternates
between facts, so every phrasing occurs in training): the test split asks every fact in wordings
no training document uses for it, so a model must recall the fact, not a memorised string. With
four training phrasings per fact, teachers memorised the training documents and answered 10-40%
of the held-out ones; with eight, 90-100% (results/LOG.md 2026-11-30, v3).

Why recall, not arithmetic: the first miniature world used multi-step arithmetic, and no CPU-sized
model learnt it (greedy exact match 0 for teachers and students alike, results/LOG.md 2026-11-28),
so its leaderboard measured noise. A second attempt, reading a quantity back from the question,
was not learnt by a 3-layer teacher in 300 steps either (copying needs induction heads, which
form late). Recalling a fact and writing out its number is learnable by a two-layer model in a
few hundred steps (v2 had 576 facts and too few exposures per fact; v3 has 144), and writing
the number out is exactly what the paper's uncommon-token failure breaks: a 2-4 digit answer is
one or two multi-digit numeral tokens for the Llama-3-like student (``451`` ``7``) and four
single digits for the digit-splitting teacher.

Answer lengths: the facts are split evenly over 1, 2, 3 and 4 digits, so the test split is
stratified by answer length (equal shares; the first test set let one one-digit item carry most of
a method's score).

Everything is a pure function of the seed: ``random.Random(seed)`` only, never ``hash()``
(salted per process), so every process and machine produces the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from xbench.io import write_text

__all__ = [
    "answer_digits",
    "facts",
    "filler_text",
    "held_out_problems",
    "make_mc_problems",
    "make_problems",
    "to_multiple_choice",
    "write_split",
]

MAX_DIGITS = 4

_NAMES = [
    "Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe", "Leo", "Emma", "Jack", "Nora",
]  # fmt: skip
_ITEMS = [
    "apples", "pencils", "stickers", "marbles", "books", "coins", "cards", "eggs", "shells",
    "stamps", "beads", "cookies",
]  # fmt: skip
# Twelve ways to ask for a fact. Each fact is trained in eight of them and tested in the other
# four; which four alternates between facts, so every phrasing occurs in training (with other
# facts) and the test asks a known question shape about a fact never seen in that shape. Every
# phrasing ends in the fact's key written the same way ("Tom's pencils"): only the wording
# before it is new to the fact at test time.
_PHRASINGS = [
    "How many are {name}'s {item}?",
    "What is the number of {name}'s {item}?",
    "Count {name}'s {item}.",
    "Tell me the count of {name}'s {item}.",
    "How large is the pile of {name}'s {item}?",
    "Give the number of {name}'s {item}.",
    "We need the total of {name}'s {item}.",
    "Please count {name}'s {item}.",
    "Find out the number of {name}'s {item}.",
    "How many do we see of {name}'s {item}?",
    "Write down the count of {name}'s {item}.",
    "What do you know about {name}'s {item}?",
]
N_PHRASINGS = len(_PHRASINGS)
# Test items: every fact in each of its held-out phrasings (a third of them): 4 x 144 = 576.
N_TEST_MAX = N_PHRASINGS // 3 * len(_NAMES) * len(_ITEMS)

Fact = dict[str, object]
Problem = dict[str, str]


def facts(seed: int) -> list[Fact]:
    """The world's fact table: one count per (name, item) pair, answer lengths in equal shares.

    Returns:
        ``len(_NAMES) * len(_ITEMS)`` (144) dicts ``{"name", "item", "value", "held_out"}`` in a
        seeded order; fact ``i`` has ``i % MAX_DIGITS + 1`` digits and ``held_out`` is the parity
        of the phrasings reserved for the test split (``i // MAX_DIGITS % 2``, so every length
        class is asked in every phrasing).
    """
    rng = random.Random(seed)
    pairs = [(n, it) for n in _NAMES for it in _ITEMS]
    rng.shuffle(pairs)
    out = []
    for i, (name, item) in enumerate(pairs):
        digits = i % MAX_DIGITS + 1
        value = rng.randint(max(2, 10 ** (digits - 1)), 10**digits - 1)  # >= 2: no "1 apples"
        out.append({"name": name, "item": item, "value": value, "held_out": i // MAX_DIGITS % 3})
    return out


def _problem(fact: Fact, phrasing: int) -> Problem:
    question = _PHRASINGS[phrasing].format(name=fact["name"], item=fact["item"])
    return {"question": question, "answer": f"#### {fact['value']}"}


def _split(fact: Fact, test: bool) -> list[int]:
    """The phrasings of a fact in the test split (``test``) or in the training pool."""
    return [k for k in range(N_PHRASINGS) if (k % 3 == fact["held_out"]) == test]


def _train_pool(seed: int) -> list[Problem]:
    """Every (fact, training phrasing) pair, in a seeded order."""
    pool = [_problem(f, k) for f in facts(seed) for k in _split(f, test=False)]
    random.Random(seed + 1).shuffle(pool)
    return pool


def make_problems(n: int, seed: int) -> list[Problem]:
    """The first ``n`` training problems of the world with this seed.

    Args:
        n: Number of problems, at most the training pool (4 phrasings x 144 facts = 576).
        seed: World seed; a longer list with the same seed starts with the shorter one.

    Returns:
        ``{"question": str, "answer": "#### N"}`` dicts with unique questions.
    """
    pool = _train_pool(seed)
    if not 0 <= n <= len(pool):
        raise ValueError(f"make_problems(n={n}): n must be in 0..{len(pool)} (the training pool).")
    return pool[:n]


def held_out_problems(n: int, seed: int) -> list[Problem]:
    """``n`` test problems: facts asked in their held-out phrasings, equal shares per length.

    The list is phrasing-major (every fact in its first held-out phrasing, then every fact in
    its second, ...), so any prefix whose length is a multiple of ``MAX_DIGITS`` is stratified.

    Args:
        n: Number of problems; a multiple of ``MAX_DIGITS``, at most 4 x 144 = 576.
        seed: World seed.
    """
    table = facts(seed)
    rows = [_problem(f, _split(f, test=True)[j]) for j in range(N_PHRASINGS // 3) for f in table]
    if n % MAX_DIGITS or not 0 <= n <= len(rows):
        raise ValueError(
            f"the stratified test split needs n_test a multiple of {MAX_DIGITS} and at most "
            f"{len(rows)} (4 held-out phrasings x {len(table)} facts); got {n}."
        )
    return rows[:n]


def answer_digits(answer: str) -> int:
    """Number of digits of the final answer of a GSM8K-format answer (its length class)."""
    return len(str(final_answer(answer)))


def final_answer(answer: str) -> int:
    """Return the integer after ``#### `` in a GSM8K-format answer."""
    return int(answer.rsplit("#### ", 1)[1].strip().replace(",", ""))


def to_multiple_choice(problem: Problem) -> dict[str, object]:
    """Turn a problem into a 4-way multiple-choice item with numeric distractors.

    The distractors are the near misses a model makes (off by one, off by ten, an operand
    instead of the result), so the task measures arithmetic, not number-shape guessing. The
    choice order is seeded by a digest of the question, so a problem always gets the same item
    regardless of which list or process it comes from.

    Args:
        problem: A ``{"question", "answer"}`` dict from :func:`make_problems`.

    Returns:
        ``{"question": str, "choices": [4 str], "label": int}`` with ``choices[label]`` correct.
    """
    correct = final_answer(problem["answer"])
    digest = hashlib.sha256(problem["question"].encode("utf-8")).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    candidates = [correct + 1, correct - 1, correct + 10, correct - 10, correct + 100, correct * 2]
    distractors: list[int] = []
    for value in rng.sample(candidates, len(candidates)):
        if value >= 0 and value != correct and value not in distractors:
            distractors.append(value)
        if len(distractors) == 3:
            break
    label = rng.randrange(4)
    choices = [*distractors[:label], correct, *distractors[label:]]
    return {"question": problem["question"], "choices": [str(c) for c in choices], "label": label}


def make_mc_problems(n: int, seed: int) -> list[dict[str, object]]:
    """Generate ``n`` multiple-choice items (:func:`make_problems` + :func:`to_multiple_choice`)."""
    return [to_multiple_choice(p) for p in make_problems(n, seed)]


_ADJECTIVES = ["small", "old", "quiet", "bright", "busy", "green", "long", "warm", "tall", "kind"]
_NOUNS = [
    "river",
    "garden",
    "teacher",
    "market",
    "train",
    "village",
    "dog",
    "window",
    "road",
    "ship",
]
_VERBS = ["passes", "waits near", "looks at", "stands by", "moves toward", "follows", "leaves"]
_ENDINGS = ["in the morning", "after lunch", "every day", "at night", "in the rain", "again", ""]


def filler_text(n: int, seed: int) -> list[str]:
    """Generate ``n`` generic English sentences (no digits) for the pretraining mix.

    Args:
        n: Number of sentences.
        seed: RNG seed; deterministic like :func:`make_problems`.

    Returns:
        Sentences such as ``"The quiet river waits near the old market in the morning."``.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        subject = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        obj = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        ending = rng.choice(_ENDINGS)
        out.append(f"{subject} {rng.choice(_VERBS)} {obj}{' ' + ending if ending else ''}.")
    return out


def write_split(out_dir: str | Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` with disjoint questions, each file atomically.

    Train: :func:`make_problems` (``n_train`` of the non-held-out phrasings); test:
    :func:`held_out_problems` (held-out phrasings, stratified by answer length). Rewriting with the
    same arguments produces byte-identical files, which makes concurrent writers (several sweep
    cells preparing the same directory) harmless.

    Args:
        out_dir: Directory to create or reuse.
        n_train: Number of training problems.
        n_test: Number of test problems (a multiple of ``MAX_DIGITS``).
        seed: World seed.

    Returns:
        ``{"train": path, "test": path}``.
    """
    out = Path(out_dir)
    splits = {"train": make_problems(n_train, seed), "test": held_out_problems(n_test, seed)}
    paths = {}
    for name, rows in splits.items():
        path = out / f"{name}.jsonl"
        write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths[name] = path
    return paths
