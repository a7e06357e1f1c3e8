"""The miniature world's tokenizer roles (issue 18): the pairs the study's comparison depends on."""

from __future__ import annotations

from pathlib import Path

import pytest

from xbench.mini import world
from xbench.tokenpair.canon import canonical_vocab
from xbench.tokenpair.projection import build_projection
from xbench.tokenpair.projection_pairs import exact_common_pairs, relaxed_common_pairs


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory):
    """The default world's three tokenizers, trained into a temporary cache (seconds, no model)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    world.configure(None)
    try:
        yield {k: world.mini_tokenizer(k) for k in ("student", "digits", "grouped")}
    finally:
        world.configure(None)
        mp.undo()


def _multi_digit(tok) -> set[int]:
    return {
        i for i, c in enumerate(canonical_vocab(tok)) if c.strip().isdigit() and len(c.strip()) > 1
    }


def test_teacher_A_leaves_every_multi_digit_numeral_uncommon(tokenizers) -> None:
    s, a = tokenizers["student"], tokenizers["digits"]
    numerals = _multi_digit(s)
    assert len(numerals) == 1100  # every 2- and 3-digit numeral, as Llama-3
    common, _ = exact_common_pairs(s, a, "trl")
    assert not numerals & set(common.tolist())  # GOLD's uncommon-token failure


def test_teacher_B_relaxed_set_differs_from_gold(tokenizers) -> None:
    s, b = tokenizers["student"], tokenizers["grouped"]
    exact_s, _ = exact_common_pairs(s, b, "trl")
    relaxed_s, relaxed_t = relaxed_common_pairs(build_projection(s, b), 0.6)
    exact, relaxed = set(exact_s.tolist()), set(relaxed_s.tolist())
    assert _multi_digit(s) <= exact  # B holds the student's numerals
    assert exact < relaxed  # and H-KL pairs more: student words B splits into pieces it lacks
    extra = sorted(relaxed - exact)
    assert len(extra) >= 10
    vocab_s = canonical_vocab(s)
    vocab_b = canonical_vocab(b)
    pair = dict(zip(relaxed_s.tolist(), relaxed_t.tolist(), strict=True))
    for i in extra:
        # The paired B piece is a proper prefix of the student word and not a student token.
        piece = vocab_b[pair[i]]
        assert vocab_s[i].startswith(piece) and piece != vocab_s[i]
        assert piece not in set(vocab_s)


def test_world_dir_changes_with_the_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XBENCH_CACHE", str(tmp_path))
    world.configure(None)
    default = world.world_dir()
    world.configure({"teacher": {"steps": 20}})
    try:
        assert world.world_dir() != default
        assert world._WORLD["teacher"]["steps"] == 20 and world._WORLD["student"]["steps"] == 300
    finally:
        world.configure(None)
