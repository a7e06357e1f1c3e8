"""The miniature's probe is a fraction in lm-eval and percent on the leaderboard, not both."""

from __future__ import annotations

import math

import pytest

from xbench.mini.tasks import utils


def test_answer_prob_is_a_fraction() -> None:
    # xbench.evaluate multiplies every lm-eval metric by 100; the task must not do it as well
    # (the first version did, and the README reported 0.13% as 13%).
    assert utils.process_answer({}, [(math.log(0.25), False)]) == {"answer_prob": 0.25, "acc": 0.0}
    assert utils.process_answer({}, [(0.0, True)]) == {"answer_prob": 1.0, "acc": 1.0}


def test_an_eval_task_set_to_null_is_dropped() -> None:
    """An experiment drops a task of its suite with `TASK: null` (Hydra cannot delete a key)."""
    from xbench.config.validate import ConfigError, validate_eval

    arith = {"num_fewshot": 0, "metric": "exact_match", "filter": "strict-match"}
    suite = {"suite": "mini", "task_include": "mini"}
    validate_eval(
        {**suite, "tasks": {"mini_arith": arith, "mini_arith_mc": None}}, need_model=False
    )
    with pytest.raises(ConfigError, match="tasks is empty"):
        validate_eval({**suite, "tasks": {"mini_arith_mc": None}}, need_model=False)
