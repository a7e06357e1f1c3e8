"""Dataset loaders for the ``mini`` suite (``custom_dataset: !function utils.load_*``).

lm-eval calls a ``custom_dataset`` function with the task's metadata as keyword arguments, which
includes whatever ``TaskManager(metadata=...)`` was given. :func:`xbench.evaluate.harness.evaluate`
passes the suite config's ``metadata`` block there (the plug-in pins ``mini_data_dir``), so the
data location travels as an explicit, absolute path: nothing depends on the working directory
(Hydra and submitit change it) or on where this YAML is installed.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import datasets

from xbench.io import read_jsonl
from xbench.mini.corpus import answer_digits, to_multiple_choice, write_split

# Defaults used when the suite config does not name a corpus; they only matter for standalone
# evaluation, a study always passes the directory its training data came from.
DEFAULT_SEED = 1234
DEFAULT_N_TRAIN = 1152
DEFAULT_N_TEST = 576


def data_dir(
    mini_data_dir: str | None = None,
    mini_seed: int = DEFAULT_SEED,
    mini_n_train: int = DEFAULT_N_TRAIN,
    mini_n_test: int = DEFAULT_N_TEST,
    **_: Any,
) -> Path:
    """Return the corpus directory, generating ``train.jsonl``/``test.jsonl`` if they are missing.

    Args:
        mini_data_dir: Directory holding the split; ``None`` means ``$XBENCH_MINI_DATA`` or, failing
            that, ``$XBENCH_CACHE/mini/arith-s<seed>-<n_train>-<n_test>``.
        mini_seed: Corpus seed used when the split has to be generated.
        mini_n_train: Number of training problems (few-shot pool) when generating.
        mini_n_test: Number of test problems when generating.
        **_: The rest of the task metadata, ignored.

    Returns:
        The absolute directory containing both files.
    """
    if mini_data_dir is None:
        mini_data_dir = os.environ.get("XBENCH_MINI_DATA")
    if mini_data_dir is None:
        from xbench.assets import cache_dir

        name = f"arith-s{mini_seed}-{mini_n_train}-{mini_n_test}"
        mini_data_dir = str(cache_dir() / "mini" / name)
    path = Path(mini_data_dir).expanduser().resolve()
    if not ((path / "train.jsonl").is_file() and (path / "test.jsonl").is_file()):
        # Generation is deterministic and each file is written atomically, so concurrent
        # evaluations that race here write byte-identical files.
        write_split(path, int(mini_n_train), int(mini_n_test), int(mini_seed))
    return path


def load_arith(**metadata: Any) -> datasets.DatasetDict:
    """Load the generate_until split: ``{"question", "answer"}`` rows for train and test."""
    path = data_dir(**metadata)
    return datasets.DatasetDict(
        {s: datasets.Dataset.from_list(read_jsonl(path / f"{s}.jsonl")) for s in ("train", "test")}
    )


def load_arith_mc(**metadata: Any) -> datasets.DatasetDict:
    """Load the same problems as multiple choice: ``{"question", "choices", "label"}`` rows."""
    path = data_dir(**metadata)
    return datasets.DatasetDict(
        {
            s: datasets.Dataset.from_list(
                [to_multiple_choice(r) for r in read_jsonl(path / f"{s}.jsonl")]
            )
            for s in ("train", "test")
        }
    )


def _digits_class(doc: dict[str, Any]) -> str:
    """The answer-length class of a doc: ``len1`` .. ``len4`` (digits of the final answer)."""
    return f"len{answer_digits(doc['answer'])}"


def process_answer(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    """Scores of one ``mini_answer`` doc from its (log-likelihood, is_greedy) result.

    ``answer_prob``: the model's probability of the whole final answer given the worked solution,
    as a fraction in [0, 1] like every lm-eval metric (``xbench.evaluate`` reports every metric
    x 100, so the leaderboard shows percent; the first version multiplied here as well and showed
    100x too much). Continuous, so it separates methods long before greedy accuracy moves (a tiny
    student's multi-digit numeral tokens are exactly what GOLD suppresses). ``acc``: every answer
    token is the argmax (lm-eval's is_greedy).
    """
    ll, greedy = results[0]
    return {"answer_prob": math.exp(ll), "acc": float(greedy)}


def _normalize(text: str) -> str:
    # The normalisation of lm-eval's gsm8k exact_match (regexes_to_ignore, ignore_case).
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        text = re.sub(pattern, "", text)
    return text.strip().lower()


def process_generation(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of one ``mini_arith`` doc, overall and in its answer-length class.

    ``results`` holds the filtered generation (the strict ``#### N`` filter's capture, or
    ``[invalid]``). Besides ``exact_match`` the doc reports ``exact_match@lenK`` for its own
    class only: lm-eval averages each metric over the docs that report it, so each
    ``exact_match@lenK`` is the exact match over the K-digit answers.
    """
    em = float(_normalize(results[0]) == _normalize(doc["answer"]))
    return {"exact_match": em, f"exact_match@{_digits_class(doc)}": em}
