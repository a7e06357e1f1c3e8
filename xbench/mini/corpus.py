"""Deterministic synthetic corpus for the miniature study: GSM8K-format arithmetic word problems.

Each problem is a short word problem with a step-by-step solution that spells out every
intermediate result and ends in GSM8K's final-answer line::

    {"question": "Tom has 23 apples and buys 45 more. How many apples does Tom have?",
     "answer": "23 + 45 = 68\\n#### 68"}

Operands have 1 to 4 digits, with the digit count drawn uniformly first so short and long numbers
are equally common (uniform values would make almost every number 4 digits, and numeral
tokenization effects would only be seen on long numbers). Results never exceed 9999, so every
number in the corpus has at most 4 digits. Operations are ``+``, ``-`` and a small ``*`` (one factor
is 2..9), in one- and two-step templates: few enough that a tiny CPU model can learn them.

Everything is a pure function of ``(n, seed)``: ``random.Random(seed)`` only, never ``hash()``
(salted per process), so every process and machine produces the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

from xbench.io import write_text

__all__ = [
    "filler_text",
    "make_mc_problems",
    "make_problems",
    "to_multiple_choice",
    "write_split",
]

MAX_VALUE = 9999

_NAMES = ["Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe", "Leo", "Emma", "Jack", "Nora"]
_ITEMS = [
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "books",
    "coins",
    "cards",
    "eggs",
    "shells",
    "stamps",
    "beads",
    "cookies",
]

Problem = dict[str, str]


def _number(rng: random.Random, max_digits: int = 4, low: int = 2) -> int:
    """Draw a number whose digit count is uniform in 1..max_digits (>= low, so no "1 apples")."""
    digits = rng.randint(1, max_digits)
    return rng.randint(max(low, 10 ** (digits - 1)), 10**digits - 1)


def _add(rng: random.Random, name: str, item: str) -> Problem | None:
    a, b = _number(rng), _number(rng)
    c = a + b
    if c > MAX_VALUE:
        return None
    q = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have?"
    return {"question": q, "answer": f"{a} + {b} = {c}\n#### {c}"}


def _sub(rng: random.Random, name: str, item: str) -> Problem | None:
    a, b = _number(rng), _number(rng)
    a, b = max(a, b), min(a, b)
    friend = rng.choice([n for n in _NAMES if n != name])
    c = a - b
    q = f"{name} has {a} {item} and gives {b} to {friend}. How many {item} does {name} have left?"
    return {"question": q, "answer": f"{a} - {b} = {c}\n#### {c}"}


def _mul(rng: random.Random, name: str, item: str) -> Problem | None:
    a, b = rng.randint(2, 9), _number(rng, max_digits=3)
    c = a * b
    q = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?"
    return {"question": q, "answer": f"{a} * {b} = {c}\n#### {c}"}


def _add_sub(rng: random.Random, name: str, item: str) -> Problem | None:
    a, b = _number(rng), _number(rng)
    s = a + b
    if s > MAX_VALUE:
        return None
    c = rng.randint(1, s)
    r = s - c
    q = (
        f"{name} has {a} {item}, buys {b} more and then gives {c} away. "
        f"How many {item} does {name} have now?"
    )
    return {"question": q, "answer": f"{a} + {b} = {s}\n{s} - {c} = {r}\n#### {r}"}


def _mul_add(rng: random.Random, name: str, item: str) -> Problem | None:
    a, b = rng.randint(2, 9), _number(rng, max_digits=3)
    p = a * b
    c = _number(rng)
    r = p + c
    if r > MAX_VALUE:
        return None
    q = (
        f"{name} buys {a} packs of {b} {item} and finds {c} more. "
        f"How many {item} does {name} have in total?"
    )
    return {"question": q, "answer": f"{a} * {b} = {p}\n{p} + {c} = {r}\n#### {r}"}


_TEMPLATES: list[Callable[[random.Random, str, str], Problem | None]] = [
    _add,
    _sub,
    _mul,
    _add_sub,
    _mul_add,
]


def make_problems(n: int, seed: int) -> list[Problem]:
    """Generate ``n`` distinct arithmetic word problems in GSM8K format.

    Args:
        n: Number of problems.
        seed: RNG seed; the same ``(n, seed)`` always gives the same list, and a longer list
            with the same seed starts with the shorter one.

    Returns:
        A list of ``{"question": str, "answer": "<steps>\\n#### N"}`` dicts with unique questions.
    """
    if n < 0:
        raise ValueError(f"make_problems(n={n}): n must be >= 0.")
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[str] = set()
    while len(out) < n:
        template = rng.choice(_TEMPLATES)
        problem = template(rng, rng.choice(_NAMES), rng.choice(_ITEMS))
        # Rejected draws (result > 9999) and duplicates are skipped, not clipped, so the
        # distribution of accepted problems stays uniform over its support.
        if problem is None or problem["question"] in seen:
            continue
        seen.add(problem["question"])
        out.append(problem)
    return out


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

    Both splits come from one :func:`make_problems` call (unique questions), so no test question
    appears in train. Rewriting with the same arguments produces byte-identical files, which
    makes concurrent writers (several sweep cells preparing the same directory) harmless.

    Args:
        out_dir: Directory to create or reuse.
        n_train: Number of training problems.
        n_test: Number of test problems.
        seed: Corpus seed.

    Returns:
        ``{"train": path, "test": path}``.
    """
    out = Path(out_dir)
    problems = make_problems(n_train + n_test, seed)
    splits = {"train": problems[:n_train], "test": problems[n_train:]}
    paths = {}
    for name, rows in splits.items():
        path = out / f"{name}.jsonl"
        write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths[name] = path
    return paths


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines split written by :func:`write_split`."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
