"""Config-time rules for the ``kd:`` and ``mix:`` knobs: each works for the methods it names or is
refused with one sentence naming the field and the fix.

:func:`check_kd_options` reads only the resolved cell config (no model, no tokenizer), so a sweep's
``plan=true`` can call it for every cell; the objective calls it before loading any teacher.

A knob set away from its default is refused when no teacher of the cell reads it (a cell-level
knob) or when the teacher that sets it under ``teachers[i].kd`` does not read it. Cells without
teachers (``ce``, ``base``) have no KD term, so no ``kd:``/``mix:`` knob applies to them; they are
exempt. :data:`KNOB_METHODS` is the table the README and the note print.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xbench.io import plain
from xbench.losses.chunks import CHUNK_METHODS
from xbench.losses.combine import MIX_MODES, MULTI_TEACHER
from xbench.losses.gold import GOLD_VARIANTS
from xbench.losses.presets import FORMULAS, PRESETS, preset_fixes
from xbench.vocab import CROSS_TOKENIZER, HYBRID, LEARNS_W, RELAXED_PAIRS, USES_W
from xbench.vocab import KD_METHODS as METHODS

__all__ = [
    "KD_DEFAULTS",
    "KL_BETA",
    "KNOB_METHODS",
    "MIX_DEFAULTS",
    "check_kd_options",
    "effective_kd",
    "hybrid_beta",
]

_ALL = frozenset(METHODS)
_CROSS = frozenset(CROSS_TOKENIZER)
_HYBRID = frozenset(HYBRID)
_W = frozenset(USES_W)

# Mirrors conf/cell.yaml (a test keeps the two equal).
KD_DEFAULTS: dict[str, Any] = {
    "semantics": "xbench",
    "alpha": 0.5,
    "rank": 4,
    "topk": 8192,
    "teacher_cache_topk": 8192,
    "temperature": 1.0,
    "chunk_method": "mean",
    "learn_w": True,
    "hkl_threshold": 0.6,
    "gold_semantics": "trl",
    "gold_weights": "adaptive",
    "gold_matched_weight": 1.0,
    "gold_unmatched_weight": 1.0,
    "kl": "forward",
    "beta": 0.5,
    "reverse_pass": False,
    "loss_chunk_size": 256,
    "multi_teacher": "static",
}
MIX_DEFAULTS: dict[str, Any] = {
    "mode": "dynamic",
    "ce_weight": 1.0,
    "kd_weight": 1.0,
    "max_scale": 1000.0,
}

# knob -> the methods whose loss reads it (the "works" column of the note's table).
KNOB_METHODS: dict[str, frozenset[str]] = {
    "semantics": _ALL,
    "alpha": frozenset(("xtoken",)),
    "rank": _W,
    "topk": frozenset(("kd", "pkl", "xtoken")),
    "teacher_cache_topk": _ALL,  # only with train.teacher_cache=true
    "temperature": _ALL,
    "chunk_method": _CROSS,
    "learn_w": frozenset(LEARNS_W),
    "hkl_threshold": frozenset(RELAXED_PAIRS),
    "gold_semantics": frozenset(("gold",)),
    "gold_weights": _HYBRID,
    "gold_matched_weight": _HYBRID,  # only with gold_weights=fixed
    "gold_unmatched_weight": _HYBRID,  # only with gold_weights=fixed
    "kl": frozenset(("kd", "gold", "pkl", "hkl", "xtoken")),
    "beta": frozenset(("kd", "gold", "pkl", "hkl", "xtoken")),  # only with kl=jsd
    "reverse_pass": _W,
    "loss_chunk_size": _ALL,
    "multi_teacher": _ALL,  # only with two or more teachers
}

# kd.kl -> beta of the generalized JSD (0 = forward KL(p_T||p_S), 1 = reverse KL(p_S||p_T)),
# the form the gold/hkl/pkl/xtoken losses take; None = read kd.beta.
KL_BETA: dict[str, float | None] = {"forward": 0.0, "reverse": 1.0, "jsd": None}


def hybrid_beta(kd: Mapping[str, Any]) -> float:
    """The JSD beta that realises ``kd.kl`` (forward 0, reverse 1, jsd ``kd.beta``)."""
    b = KL_BETA[str(kd["kl"])]
    return float(kd["beta"]) if b is None else b


def effective_kd(cfg: Any, i: int) -> dict[str, Any]:
    """Teacher ``i``'s kd options: the cell's ``kd:`` overridden by ``teachers[i].kd``."""
    base = plain(cfg.get("kd") or {})
    over = plain((cfg.teachers[i].get("kd") if cfg.get("teachers") else None) or {})
    return {**KD_DEFAULTS, **base, **over}


def _differs(a: Any, b: Any) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return bool(a) != bool(b)
    if isinstance(b, int | float) and isinstance(a, int | float):
        return float(a) != float(b)
    return a != b


def _check_values(kd: Mapping[str, Any], where: str) -> None:
    """Each value on its own: range and vocabulary."""

    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"{where}.{key}={kd[key]!r} {what}.")

    unknown = sorted(set(kd) - set(KD_DEFAULTS))
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]} is not a kd option; use one of {sorted(KD_DEFAULTS)}."
        )
    if kd["semantics"] not in PRESETS:
        raise bad("semantics", f"is unknown; use one of {PRESETS}")
    if not 0.0 <= float(kd["alpha"]) <= 1.0:
        raise bad("alpha", "must be in [0, 1] (0 = P-KL, 1 = H-KL)")
    for key in ("rank", "topk", "teacher_cache_topk"):
        if int(kd[key]) < 1:
            raise bad(key, "must be a positive integer")
    if not float(kd["temperature"]) > 0:
        raise bad("temperature", "must be > 0 (1.0 is the paper's)")
    if kd["chunk_method"] not in CHUNK_METHODS:
        raise bad("chunk_method", f"is unknown; use one of {CHUNK_METHODS}")
    if not 0.0 < float(kd["hkl_threshold"]) <= 1.0:
        raise bad("hkl_threshold", "must be in (0, 1] (0.6 is the paper's)")
    if kd["gold_semantics"] not in GOLD_VARIANTS:
        raise bad("gold_semantics", f"is unknown; use one of {sorted(GOLD_VARIANTS)}")
    if kd["gold_weights"] not in ("adaptive", "fixed"):
        raise bad("gold_weights", "is unknown; use adaptive (|pairs|/V_T) or fixed")
    for key in ("gold_matched_weight", "gold_unmatched_weight"):
        if float(kd[key]) < 0:
            raise bad(key, "must be >= 0 (NeMo uses 1.0 for both)")
    if kd["kl"] not in KL_BETA:
        raise bad("kl", f"is unknown; use one of {sorted(KL_BETA)}")
    if not 0.0 <= float(kd["beta"]) <= 1.0:
        raise bad("beta", "must be in [0, 1]")
    if int(kd["loss_chunk_size"]) < 0:
        raise bad("loss_chunk_size", "must be >= 0 (0 = one slice)")
    if kd["multi_teacher"] not in MULTI_TEACHER:
        raise bad("multi_teacher", f"is unknown; use one of {MULTI_TEACHER}")


def _applies(key: str, kd: Mapping[str, Any], methods: set[str], n_teachers: int, cache: bool):
    """Whether knob ``key`` (at its value in ``kd``) is read by any of ``methods``."""
    if not methods & KNOB_METHODS[key]:
        return False
    if key == "teacher_cache_topk":
        return cache
    if key in ("gold_matched_weight", "gold_unmatched_weight"):
        return kd["gold_weights"] == "fixed"
    if key == "beta":
        return kd["kl"] == "jsd"
    if key == "multi_teacher":
        return n_teachers > 1
    if key == "topk" and methods & KNOB_METHODS["topk"] == {"xtoken"}:
        return float(kd["alpha"]) < 1.0  # alpha = 1 is pure H-KL: no P-KL columns
    return True


_FIX = {
    "semantics": "it applies to every method",
    "alpha": "it weights H-KL against P-KL in xtoken only",
    "rank": "only W users (pkl, hkl, xtoken) read it",
    "topk": "only kd, pkl and xtoken (alpha < 1) restrict to teacher top-k columns",
    "teacher_cache_topk": "it sizes the teacher logit cache: set train.teacher_cache=true",
    "temperature": "it applies to every method",
    "chunk_method": "only the chunk-level (cross-tokenizer) methods read it",
    "learn_w": "only P-KL (pkl, xtoken) learns W; H-KL keeps W fixed",
    "hkl_threshold": "only hkl and xtoken use the relaxed common set",
    "gold_semantics": "only gold builds exact string pairs",
    "gold_weights": "only gold, hkl and xtoken have common/uncommon terms",
    "gold_matched_weight": "it is read with kd.gold_weights=fixed by gold, hkl and xtoken",
    "gold_unmatched_weight": "it is read with kd.gold_weights=fixed by gold, hkl and xtoken",
    "kl": "uld has no divergence (sorted L1)",
    "beta": "it is read only with kd.kl=jsd",
    "reverse_pass": "only W users (pkl, hkl, xtoken) read it",
    "loss_chunk_size": "it applies to every method",
    "multi_teacher": "it needs two or more teachers",
}


def check_kd_options(cfg: Any) -> None:
    """Refuse any ``kd:``/``mix:`` setting that no teacher of the cell would read, and bad values.

    Args:
        cfg: the resolved cell config (``kd``, ``mix``, ``teachers``, ``train``); a DictConfig or
            nested dicts.

    Raises:
        ValueError: one sentence naming the field and the fix.
    """
    teachers = list(cfg.get("teachers") or [])
    train = cfg.get("train") or {}
    cache = bool(train.get("teacher_cache", False))
    base = {**KD_DEFAULTS, **plain(cfg.get("kd") or {})}
    _check_values(base, "kd")
    mix = {**MIX_DEFAULTS, **plain(cfg.get("mix") or {})}
    if mix["mode"] not in MIX_MODES:
        raise ValueError(f"mix.mode={mix['mode']!r} is unknown; use one of {MIX_MODES}.")
    if not float(mix["max_scale"]) > 0:
        raise ValueError(f"mix.max_scale={mix['max_scale']!r} must be > 0; the default is 1000.")
    if not teachers:
        return  # no KD term: nothing below applies (ce / base cells)
    if mix["mode"] == "dynamic":
        for key in ("ce_weight", "kd_weight"):
            if _differs(mix[key], MIX_DEFAULTS[key]):
                raise ValueError(
                    f"mix.{key}={mix[key]} is ignored by mix.mode=dynamic (the scale is "
                    f"sg(|CE|/|KD|)); set mix.mode=fixed or leave mix.{key} at 1.0."
                )
    elif _differs(mix["max_scale"], MIX_DEFAULTS["max_scale"]):
        raise ValueError(
            f"mix.max_scale={mix['max_scale']} caps the dynamic scale only; set "
            "mix.mode=dynamic or leave it at 1000."
        )
    methods = {str(t["method"]) for t in teachers}
    for key, default in KD_DEFAULTS.items():
        if _differs(base[key], default) and not _applies(key, base, methods, len(teachers), cache):
            raise ValueError(
                f"kd.{key}={base[key]!r} is read by no teacher of this cell "
                f"({', '.join(sorted(methods))}): {_FIX[key]}; remove the override."
            )
    for i, t in enumerate(teachers):
        own = plain(t.get("kd") or {})
        kd = {**base, **own}
        where = f"teachers[{i}].kd"
        _check_values(kd, where)
        for key in own:
            if key == "multi_teacher":
                raise ValueError(
                    f"{where}.multi_teacher is a cell-level option; set kd.multi_teacher instead."
                )
            if _differs(own[key], base[key]) and not _applies(
                key, kd, {str(t["method"])}, len(teachers), cache
            ):
                raise ValueError(
                    f"{where}.{key}={own[key]!r} is not read by method {t['method']}: "
                    f"{_FIX[key]}; remove the override."
                )
        topk_user = str(t["method"]) in KNOB_METHODS["topk"]
        if cache and topk_user and int(kd["teacher_cache_topk"]) < int(kd["topk"]):
            raise ValueError(
                f"{where}.teacher_cache_topk={kd['teacher_cache_topk']} keeps fewer teacher "
                f"logits than kd.topk={kd['topk']} needs; raise teacher_cache_topk to at "
                "least kd.topk."
            )
    for i, t in enumerate(teachers):
        kd = {**base, **plain(t.get("kd") or {})}
        sem, method = str(kd["semantics"]), str(t["method"])
        if method not in FORMULAS[sem]:
            raise ValueError(
                f"teachers[{i}].method={method} has no kd.semantics={sem} formula (TRL has only "
                "gold and uld); use kd.semantics=xbench or authors for this teacher."
            )
        for key in preset_fixes(sem):
            if _differs(kd[key], KD_DEFAULTS[key]):
                raise ValueError(
                    f"kd.{key}={kd[key]!r} is decided by kd.semantics={sem} (teachers[{i}]); "
                    f"remove the override or use kd.semantics=xbench."
                )
    if base["multi_teacher"] == "logit_avg" and methods != {"kd"}:
        raise ValueError(
            "kd.multi_teacher=logit_avg averages logits, so every teacher must share the "
            "student's tokenizer and use method kd; use static or softmax_* weights instead."
        )
