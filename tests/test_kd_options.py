"""Every kd:/mix: knob works for the methods that read it or is refused at config time."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from xbench.losses.options import KD_DEFAULTS, MIX_DEFAULTS, check_kd_options

CELL = Path(__file__).resolve().parents[1] / "conf" / "cell.yaml"


def cfg(*methods: str, kd: dict | None = None, mix: dict | None = None, **extra) -> dict:
    teachers = [{"method": m, "kd": {}} for m in methods]
    return {"kd": kd or {}, "mix": mix or {}, "teachers": teachers, "train": {}, **extra}


def test_defaults_mirror_cell_yaml() -> None:
    c = OmegaConf.load(CELL)
    assert OmegaConf.to_container(c.kd) == KD_DEFAULTS
    assert OmegaConf.to_container(c.mix) == MIX_DEFAULTS


@pytest.mark.parametrize(
    ("methods", "kd", "mix", "match"),
    [
        (("gold",), {"alpha": 0.25}, {}, r"kd.alpha=0.25 is read by no teacher .*xtoken only"),
        (("gold",), {"topk": 64}, {}, r"kd.topk=64 is read by no teacher"),
        (("uld",), {"kl": "reverse"}, {}, r"kd.kl='reverse' is read by no teacher .*uld has no"),
        (("gold",), {"beta": 0.1}, {}, r"kd.beta=0.1 .* only with kd.kl=jsd"),
        (("hkl",), {"learn_w": False}, {}, r"kd.learn_w=False .*H-KL keeps W fixed"),
        (("gold",), {"gold_matched_weight": 2.0}, {}, r"kd.gold_matched_weight=2.0 .*fixed"),
        (("pkl",), {"gold_weights": "fixed"}, {}, r"kd.gold_weights='fixed' is read by no"),
        (("kd",), {"rank": 2}, {}, r"kd.rank=2 is read by no teacher"),
        (("gold",), {"teacher_cache_topk": 64}, {}, r"train.teacher_cache=true"),
        (("pkl",), {"multi_teacher": "best"}, {}, r"needs two or more teachers"),
        (("xtoken",), {"alpha": 1.0, "topk": 64}, {}, r"kd.topk=64 is read by no teacher"),
        (("gold",), {"gold_weights": "fixd"}, {}, r"kd.gold_weights='fixd' is unknown"),
        (("gold",), {"kl": "rev"}, {}, r"kd.kl='rev' is unknown"),
        (("gold",), {"tempreature": 2}, {}, r"kd.tempreature is not a kd option"),
        (("gold",), {}, {"kd_weight": 0.5}, r"mix.kd_weight=0.5 is ignored by mix.mode=dynamic"),
        (("gold",), {}, {"mode": "fixed", "max_scale": 5}, r"mix.max_scale=5 caps the dynamic"),
        (("gold",), {}, {"mode": "sum"}, r"mix.mode='sum' is unknown"),
        (("kd", "pkl"), {"multi_teacher": "logit_avg"}, {}, r"logit_avg averages logits"),
    ],
)
def test_refused_with_one_sentence(methods, kd, mix, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_kd_options(cfg(*methods, kd=kd, mix=mix))


@pytest.mark.parametrize(
    ("methods", "kd", "mix"),
    [
        (("xtoken",), {"alpha": 0.25, "topk": 64, "kl": "reverse"}, {}),
        (("kd", "gold"), {"kl": "jsd", "beta": 0.1}, {}),
        (("kd", "pkl"), {"rank": 2, "alpha": 0.5}, {}),  # rank read by pkl, not by kd: accepted
        (("hkl",), {"gold_weights": "fixed", "gold_matched_weight": 2.0}, {}),
        (("kd",), {"topk": 64, "kl": "reverse"}, {"mode": "fixed", "kd_weight": 0.5}),
        (("kd", "pkl"), {"multi_teacher": "softmax_ce"}, {}),
        ((), {"alpha": 0.1}, {"kd_weight": 3.0}),  # ce: no KD term, no knob applies
    ],
)
def test_accepted_where_a_teacher_reads_it(methods, kd, mix) -> None:
    check_kd_options(cfg(*methods, kd=kd, mix=mix))


def test_per_teacher_overrides_and_cache_topk() -> None:
    c = cfg("kd", "pkl")
    c["teachers"][0]["kd"] = {"alpha": 0.1}
    with pytest.raises(ValueError, match=r"teachers\[0\].kd.alpha=0.1 is not read by method kd"):
        check_kd_options(c)
    c["teachers"][0]["kd"] = {"topk": 64}
    check_kd_options(c)
    c["train"] = {"teacher_cache": True}
    c["kd"] = {"teacher_cache_topk": 32}
    with pytest.raises(ValueError, match=r"teacher_cache_topk=32 keeps fewer teacher logits"):
        check_kd_options(c)
