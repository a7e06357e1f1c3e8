"""The miniature's probe is a fraction in lm-eval and percent on the leaderboard, not both."""

from __future__ import annotations

import math

from xbench.tasks.mini import utils


def test_answer_prob_is_a_fraction() -> None:
    # xbench.evaluate multiplies every lm-eval metric by 100; the task must not do it as well
    # (the first version did, and the README reported 0.13% as 13%).
    assert utils.process_answer({}, [(math.log(0.25), False)]) == {"answer_prob": 0.25, "acc": 0.0}
    assert utils.process_answer({}, [(0.0, True)]) == {"answer_prob": 1.0, "acc": 1.0}
