"""Tokenizer-pair audit: decides, before any training, whether P-KL or H-KL suits a pair.

The X-Token paper picks the loss per teacher from a one-off coverage audit (its Table 8): if
critical student tokens (numerals) have no partner in the common set, a partitioned loss pushes
their probability down whatever the ground truth (the paper's Proposition 1), so the pair needs
P-KL; if the partition is sound, H-KL. ``audit_pair`` computes the numbers behind that choice and
``render_markdown`` writes them as a report; ``render_table8`` puts several teachers side by side
with the paper's published values. The class definitions are in ``CLASS_DEFINITIONS`` and every
report prints them. Other definitions:

- a class member is *covered* by a set when its id is one of the set's student ids;
- GOLD's set is the 1-to-1 exact set (TRL semantics = raw ``get_vocab`` strings, canonical =
  ``canonical_vocab`` strings); H-KL's relaxed set is ``relaxed_common_pairs(W, 0.6)``, i.e. after
  teacher-token collisions are resolved.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xbench.tokenpair.canon import token_table
from xbench.tokenpair.projection import (
    Projection,
    exact_common_pairs,
    relaxed_common_pairs,
    tokenizer_fingerprint,
)

__all__ = [
    "CLASS_DEFINITIONS",
    "PAPER_TABLE8",
    "TOKEN_CLASSES",
    "audit_pair",
    "render_markdown",
    "render_table8",
    "token_classes",
]

TOKEN_CLASSES = (
    "digit1",
    "digit2",
    "digit3",
    "punct_single",
    "punct_space",
    "punct_multi",
    "alpha",
    "multibyte",
)
_CLASS_TITLES = {
    "digit1": "1-digit numerals",
    "digit2": "2-digit numerals",
    "digit3": "3-digit numerals",
    "punct": "ASCII punctuation, all forms",
    "punct_single": "ASCII punctuation, single character",
    "punct_space": "ASCII punctuation, space + one character",
    "punct_multi": "ASCII punctuation, multi-character",
    "alpha": "alphabetic (ASCII)",
    "multibyte": "multi-byte",
}
# Every class is over the student's non-special tokens, by canonical string (true bytes), and
# the classes are disjoint; "punct" is the union of the three punctuation classes.
CLASS_DEFINITIONS = {
    "digit1": "exactly 1 ASCII digit, no leading space",
    "digit2": "exactly 2 ASCII digits, no leading space",
    "digit3": "exactly 3 ASCII digits, no leading space",
    "punct": "the three punctuation rows below together",
    "punct_single": "exactly one character of Python's string.punctuation (32 in all)",
    "punct_space": "a space followed by exactly one string.punctuation character",
    "punct_multi": "two or more string.punctuation characters, optionally after one space",
    "alpha": "one or more ASCII letters, optionally after one space",
    "multibyte": "any token holding a byte >= 0x80 (a UTF-8 fragment included)",
}
# The paper's Table 8 (covered / total under GOLD's common set), as far as xbench's sources
# quote it: the numeral rows for both teachers and the punctuation row for Qwen3. Rows missing
# here print "n/a" rather than a guess.
PAPER_TABLE8: dict[str, dict[str, tuple[int, int]]] = {
    "Qwen3-4B": {"digit2": (0, 100), "digit3": (0, 1000), "punct": (88, 88)},
    "Phi-4-mini": {"digit2": (100, 100), "digit3": (1000, 1000)},
}
# Which paper teacher an xbench tokenizer name stands for (same tokenizer family).
PAPER_TEACHER = {"qwen3": "Qwen3-4B", "phi4like": "Phi-4-mini"}
# Rows the paper defines differently from xbench, said beside the numbers.
PAPER_ROW_NOTES = {
    "punct": "the paper counts 88 punctuation tokens without stating its definition; xbench "
    "counts every punctuation-only token of the student, so the totals differ",
}
_PUNCT = frozenset(string.punctuation)
_ASCII_LETTERS = frozenset(string.ascii_letters)
# H-KL's threshold on a student row's largest W weight (paper: 0.6).
RELAXED_THRESHOLD = 0.6
# Share of the sample's student numeral tokens that may lack a partner before the pair is judged
# unsound for a partitioned loss; small, because Proposition 1 suppresses every such token.
CRITICAL_SHARE = 0.01

# texts -> one SeqAlignment per text (student and teacher tokenizations of the same text).
Aligner = Callable[[Sequence[str]], list[Any]]


def token_classes(tokenizer: Any) -> dict[str, np.ndarray]:
    """Student ids of each Table-8 class (see the module docstring for the definitions)."""
    table = token_table(tokenizer)
    members: dict[str, list[int]] = {name: [] for name in TOKEN_CLASSES}
    for i, (text, raw, special) in enumerate(
        zip(table.canonical, table.raw_bytes, table.special, strict=True)
    ):
        if special or raw is None or not text:
            continue
        if any(b >= 0x80 for b in raw):
            members["multibyte"].append(i)
            continue
        if text.isascii() and text.isdigit() and len(text) <= 3:
            members[f"digit{len(text)}"].append(i)
            continue
        body = text[1:] if text.startswith(" ") and len(text) > 1 else text
        if all(ch in _PUNCT for ch in body):
            if len(text) == 1:
                members["punct_single"].append(i)
            elif len(body) == 1:
                members["punct_space"].append(i)
            else:
                members["punct_multi"].append(i)
        elif all(ch in _ASCII_LETTERS for ch in body):
            members["alpha"].append(i)
    return {name: np.asarray(ids, dtype=np.int64) for name, ids in members.items()}


def _is_numeral(text: str) -> bool:
    body = text.strip()
    return bool(body) and body.isascii() and body.isdigit()


def audit_pair(
    student_tok: Any,
    teacher_tok: Any,
    corpus_texts: Sequence[str],
    proj: Projection,
    *,
    aligner: Aligner | None = None,
    align_method: str = "offset",
    threshold: float = RELAXED_THRESHOLD,
) -> dict[str, Any]:
    """Audit a student/teacher tokenizer pair and recommend P-KL or H-KL.

    Args:
        student_tok: Student fast tokenizer.
        teacher_tok: Teacher fast tokenizer.
        corpus_texts: Sample texts for alignment and numeral statistics (may be empty).
        proj: W for this pair (``build_projection`` / ``load_or_build``).
        aligner: ``aligner(texts) -> list[SeqAlignment]``; default: ``TokenizerPairAligner``
            of ``xbench.tokenpair.align`` with ``align_method``.
        align_method: ``"offset"`` (linear time, default) or ``"dp"`` (the paper's DP).
        threshold: H-KL's relaxed-set threshold on a row's largest weight.

    Returns:
        A JSON-serializable report (keys: ``student``, ``teacher``, ``vocab``, ``common_sets``,
        ``coverage``, ``relaxed``, ``projection``, ``numerals``, ``alignment``,
        ``recommendation``).
    """
    if align_method not in ("offset", "dp"):
        raise ValueError(f"align_method={align_method!r}: use 'offset' or 'dp'.")
    for side, tok in (("student", student_tok), ("teacher", teacher_tok)):
        if tokenizer_fingerprint(tok) != proj.meta[side]["fingerprint"]:
            raise ValueError(
                f"proj was built for a different {side} tokenizer (meta.{side}.fingerprint "
                "differs): build W for this pair with load_or_build(student_tok, teacher_tok)."
            )
    s_table, t_table = token_table(student_tok), token_table(teacher_tok)
    s_canon = {c for c, sp in zip(s_table.canonical, s_table.special, strict=True) if not sp}
    t_canon = {c for c, sp in zip(t_table.canonical, t_table.special, strict=True) if not sp}

    sets = {
        "gold_trl": exact_common_pairs(student_tok, teacher_tok, "trl")[0].numpy(),
        "gold_canonical": exact_common_pairs(student_tok, teacher_tok, "canonical")[0].numpy(),
        "hkl_relaxed": relaxed_common_pairs(proj, threshold)[0].numpy(),
    }
    classes = token_classes(student_tok)
    classes = {
        "digit1": classes["digit1"],
        "digit2": classes["digit2"],
        "digit3": classes["digit3"],
        "punct": np.concatenate(
            [classes[k] for k in ("punct_single", "punct_space", "punct_multi")]
        ),
        **{k: v for k, v in classes.items() if not k.startswith("digit")},
    }
    coverage = {
        name: {
            "title": _CLASS_TITLES[name],
            "definition": CLASS_DEFINITIONS[name],
            "total": len(ids),
            **{key: int(np.isin(ids, members).sum()) for key, members in sets.items()},
        }
        for name, ids in classes.items()
    }
    top_w = proj.weights.max(dim=1).values
    n_rows = proj.meta["student"]["vocab_size"]
    critical = np.concatenate([classes["digit2"], classes["digit3"], classes["digit1"]])
    critical = critical[~np.isin(critical, sets["hkl_relaxed"])]

    report: dict[str, Any] = {
        "student": _describe(student_tok, proj.meta["student"]),
        "teacher": _describe(teacher_tok, proj.meta["teacher"]),
        "vocab": {
            "student_size": len(s_table.canonical),
            "teacher_size": len(t_table.canonical),
            "canonical_overlap": len(s_canon & t_canon),
            "canonical_overlap_share_of_student": len(s_canon & t_canon) / max(len(s_canon), 1),
        },
        "common_sets": {key: len(ids) for key, ids in sets.items()},
        "coverage": coverage,
        "relaxed": {
            "threshold": threshold,
            "rows_top_weight_ge_threshold": int((top_w[:n_rows] >= threshold).sum()),
            "share_of_student_rows": float((top_w[:n_rows] >= threshold).float().mean()),
            "pairs_after_collisions": len(sets["hkl_relaxed"]),
        },
        "projection": {
            "K": proj.meta["K"],
            "content_hash": proj.meta.get("content_hash", proj.content_hash),
            "rules": proj.meta["rules"],
            "stats": proj.meta["stats"],
        },
        "numerals": _numeral_stats(
            student_tok, teacher_tok, corpus_texts, s_table, t_table, sets, critical
        ),
        "alignment": _alignment_stats(
            student_tok, teacher_tok, corpus_texts, aligner, align_method
        ),
    }
    report["recommendation"] = _recommend(report, len(critical))
    return report


def _describe(tok: Any, meta_side: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": str(getattr(tok, "name_or_path", "") or type(tok).__name__),
        "vocab_size": meta_side["vocab_size"],
        "fingerprint": meta_side["fingerprint"],
    }


def _numeral_stats(
    student_tok: Any,
    teacher_tok: Any,
    texts: Sequence[str],
    s_table: Any,
    t_table: Any,
    sets: dict[str, np.ndarray],
    critical: np.ndarray,
) -> dict[str, Any]:
    """Numeral tokens in the vocabularies and in the sample corpus, per side."""
    out: dict[str, Any] = {"critical_student_tokens": len(critical), "sample_texts": len(texts)}
    s_ids = student_tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    t_ids = teacher_tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    for side, table, seqs in (("student", s_table, s_ids), ("teacher", t_table, t_ids)):
        canon = table.canonical
        numeral_vocab = [i for i, c in enumerate(canon) if _is_numeral(c) and not table.special[i]]
        counts = Counter(t for seq in seqs for t in seq if _is_numeral(canon[t]))
        total = sum(counts.values())
        multi = sum(n for t, n in counts.items() if len(canon[t].strip()) > 1)
        out[side] = {
            "numeral_vocab_tokens": len(numeral_vocab),
            "tokens_in_sample": sum(len(seq) for seq in seqs),
            "numeral_tokens_in_sample": total,
            "multi_digit_share_of_numerals": multi / total if total else None,
        }
        if side == "student":
            crit = set(critical.tolist())
            outside = {key: set(ids.tolist()) for key, ids in sets.items()}
            n_crit = sum(n for t, n in counts.items() if t in crit)
            out[side]["critical_share_of_numerals"] = n_crit / total if total else None
            out[side]["numerals_outside_set_share"] = {
                key: (sum(n for t, n in counts.items() if t not in ids) / total if total else None)
                for key, ids in outside.items()
            }
    return out


def _default_aligner(student_tok: Any, teacher_tok: Any, method: str) -> tuple[Aligner | None, str]:
    """The project's aligner for this pair, or None with the reason it is unavailable."""
    try:
        from xbench.tokenpair.align import TokenizerPairAligner
    except ImportError as err:
        return None, f"xbench.tokenpair.align is not importable ({err})"
    pair = TokenizerPairAligner(student_tok, teacher_tok)

    def run(texts: Sequence[str]) -> list[Any]:
        # Tokenized as in training (special tokens added), so a one-sided BOS shows up as a gap.
        s_ids, t_ids, s_off, t_off = pair.encode(texts)
        if method == "offset":
            return pair.align_batch(s_ids, t_ids, s_off, t_off)
        return [pair.align_dp(s, t) for s, t in zip(s_ids, t_ids, strict=True)]

    return run, ""


def _alignment_stats(
    student_tok: Any,
    teacher_tok: Any,
    texts: Sequence[str],
    aligner: Aligner | None,
    method: str,
) -> dict[str, Any]:
    """Chunk shapes (1:1, 1:N, N:1, N:M) and gap tokens over the sample corpus."""
    if not texts:
        return {"available": False, "reason": "no sample corpus"}
    if aligner is None:
        aligner, reason = _default_aligner(student_tok, teacher_tok, method)
        if aligner is None:
            return {"available": False, "reason": reason}
    shapes = Counter({"1:1": 0, "1:N": 0, "N:1": 0, "N:M": 0})
    gaps = {"student": 0, "teacher": 0}
    invalid = tokens_s = tokens_t = 0
    for al in aligner(list(texts)):
        s_chunk, t_chunk = np.asarray(al.student_chunk), np.asarray(al.teacher_chunk)
        n_chunks = int(al.num_chunks)
        n_s = np.bincount(s_chunk[s_chunk >= 0], minlength=n_chunks)
        n_t = np.bincount(t_chunk[t_chunk >= 0], minlength=n_chunks)
        shapes["1:1"] += int(((n_s == 1) & (n_t == 1)).sum())
        shapes["1:N"] += int(((n_s == 1) & (n_t > 1)).sum())
        shapes["N:1"] += int(((n_s > 1) & (n_t == 1)).sum())
        shapes["N:M"] += int(((n_s > 1) & (n_t > 1)).sum())
        gaps["student"] += int((s_chunk < 0).sum())
        gaps["teacher"] += int((t_chunk < 0).sum())
        invalid += int((~np.asarray(al.valid, dtype=bool)).sum())
        tokens_s += len(s_chunk)
        tokens_t += len(t_chunk)
    n = sum(shapes.values())
    return {
        "available": True,
        "method": method,
        "sequences": len(texts),
        "chunks": n,
        "chunk_shapes": dict(shapes),
        "chunk_shape_shares": {k: v / n if n else None for k, v in shapes.items()},
        "gap_tokens": gaps,
        "invalid_chunks": invalid,
        "student_tokens": tokens_s,
        "teacher_tokens": tokens_t,
    }


def _recommend(report: dict[str, Any], n_critical: int) -> dict[str, str]:
    """P-KL when numerals lack a partner in H-KL's common set, else H-KL."""
    share = report["numerals"]["student"].get("critical_share_of_numerals")
    relaxed = report["relaxed"]["share_of_student_rows"]
    unsound = n_critical > 0 and (share is None or share >= CRITICAL_SHARE)
    if unsound:
        in_sample = "" if share is None else f" ({share:.1%} of the sample's student numerals)"
        reason = (
            f"{n_critical} student numeral tokens{in_sample} have no partner in the common set, "
            "so a partitioned loss would push their probability down (Proposition 1); P-KL "
            "keeps their identity through W."
        )
        return {"method": "pkl", "reason": reason}
    reason = (
        f"every student numeral token that matters has a 1-to-1 teacher partner "
        f"({n_critical} without one, below {CRITICAL_SHARE:.0%} of sample numerals) and "
        f"{relaxed:.1%} of student rows are in the relaxed set: the partition is sound."
    )
    return {"method": "hkl", "reason": reason}


def table8_lines(reports: dict[str, dict[str, Any]]) -> list[str]:
    """The paper's Table 8 for one student and several teachers: GOLD common-set coverage
    (TRL semantics, which is GOLD's), one column per teacher, the paper's published value beside
    each teacher it studied, then the class definitions."""
    names = list(reports)
    paper = {n: PAPER_TABLE8.get(PAPER_TEACHER.get(n, "")) for n in names}
    head = ["class"]
    for n in names:
        head.append(f"{n} (xbench)")
        if paper[n] is not None:
            head.append(f"{PAPER_TEACHER[n]} (paper)")
    lines = [
        "## Table 8: coverage by GOLD's common set (covered / total)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    first = reports[names[0]]["coverage"]
    for key, row in first.items():
        cells = [row["title"]]
        for n in names:
            r = reports[n]["coverage"][key]
            cells.append(f"{r['gold_trl']:,} / {r['total']:,}")
            if paper[n] is not None:
                pv = paper[n].get(key)
                cells.append("n/a" if pv is None else f"{pv[0]:,} / {pv[1]:,}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Class definitions (student tokens, special tokens excluded, classes disjoint):",
        "",
    ]
    lines += [f"- {row['title']}: {row['definition']}" for row in first.values()]
    lines += [
        f"- {_CLASS_TITLES[k]} differs from the paper: {note}"
        for k, note in PAPER_ROW_NOTES.items()
    ]
    lines.append(
        "- paper values are those xbench's sources quote (n/a: not quoted); a teacher without a "
        "paper column is not one the paper studied"
    )
    return lines


def render_table8(student: str, reports: dict[str, dict[str, Any]]) -> str:
    """Markdown report of :func:`table8_lines` for ``student`` and the teachers' audit reports
    (keyed by teacher name), with each teacher's recommendation."""
    lines = [f"# Table 8 for student {student}", ""]
    lines += table8_lines(reports)
    lines += ["", "## Recommendations", ""]
    for n, rep in reports.items():
        rec = rep["recommendation"]
        lines.append(f"- {n}: **{rec['method'].upper()}** ({rec['reason']})")
    return "\n".join(lines) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    """Human-readable report (the JSON is the source of truth)."""
    s, t, v = report["student"], report["teacher"], report["vocab"]
    rec = report["recommendation"]
    lines = [
        f"# Tokenizer-pair audit: {s['name']} (student) vs {t['name']} (teacher)",
        "",
        f"**Recommendation: {rec['method'].upper()}** — {rec['reason']}",
        "",
        "## Vocabularies",
        "",
        f"- student {v['student_size']:,} tokens, teacher {v['teacher_size']:,} tokens",
        f"- canonical overlap: {v['canonical_overlap']:,} strings "
        f"({v['canonical_overlap_share_of_student']:.1%} of the student's)",
        f"- GOLD exact common set: {report['common_sets']['gold_trl']:,} (TRL raw strings), "
        f"{report['common_sets']['gold_canonical']:,} (canonical)",
        f"- H-KL relaxed set (top W weight >= {report['relaxed']['threshold']}): "
        f"{report['relaxed']['rows_top_weight_ge_threshold']:,} rows "
        f"({report['relaxed']['share_of_student_rows']:.1%}), "
        f"{report['relaxed']['pairs_after_collisions']:,} pairs after collisions",
        "",
        "## Coverage of student token classes (covered / total)",
        "",
        "| class | GOLD (TRL) | GOLD (canonical) | H-KL relaxed |",
        "|---|---|---|---|",
    ]
    for row in report["coverage"].values():
        cells = [f"{row[key]:,} / {row['total']:,}" for key in ("gold_trl", "gold_canonical")]
        cells.append(f"{row['hkl_relaxed']:,} / {row['total']:,}")
        lines.append(f"| {row['title']} | " + " | ".join(cells) + " |")
    short = str(t["name"]).rstrip("/").rsplit("/", 1)[-1]  # a directory or Hub id: last part
    lines += ["", *table8_lines({short: report}), ""]
    num = report["numerals"]
    lines += ["", "## Numerals", ""]
    lines.append(
        f"- critical student tokens (numerals outside H-KL's set): "
        f"{num['critical_student_tokens']:,}"
    )
    for side in ("student", "teacher"):
        n = num[side]
        multi = n["multi_digit_share_of_numerals"]
        lines.append(
            f"- {side}: {n['numeral_vocab_tokens']:,} numeral tokens in the vocabulary; "
            f"{n['numeral_tokens_in_sample']:,} of {n['tokens_in_sample']:,} sample tokens are "
            f"numerals, {'n/a' if multi is None else f'{multi:.1%}'} of them multi-digit"
        )
    al = report["alignment"]
    lines += ["", "## Alignment on the sample corpus", ""]
    if al["available"]:
        shares = al["chunk_shape_shares"]
        lines.append(
            f"- {al['sequences']} sequences, {al['chunks']:,} chunks ({al['method']} aligner)"
        )
        lines.append(
            "- chunk shapes: "
            + ", ".join(f"{k} {al['chunk_shapes'][k]:,} ({shares[k]:.1%})" for k in shares)
        )
        lines.append(
            f"- gap tokens: student {al['gap_tokens']['student']:,}, "
            f"teacher {al['gap_tokens']['teacher']:,}; invalid chunks {al['invalid_chunks']:,}"
        )
    else:
        lines.append(f"- not computed: {al['reason']}")
    p = report["projection"]
    lines += [
        "",
        "## Projection W",
        "",
        f"- K = {p['K']}, content hash `{p['content_hash'][:16]}`",
        "- stats: " + ", ".join(f"{k} {val:,}" for k, val in p["stats"].items()),
        "",
    ]
    return "\n".join(lines)
