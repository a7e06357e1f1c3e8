"""Projection W on tiny trained tokenizers: the paper's rules, the artifact, the loss helpers."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from xbench.tokenpair import projection as projection_mod
from xbench.tokenpair.projection import (
    Projection,
    ProjectionConfig,
    build_projection,
    exact_common_pairs,
    load_or_build,
    relaxed_common_pairs,
    to_sparse,
)

CORPUS = [
    "In 2019 there were 201 apples and 365 pears, 1000 plums; 42 + 17 = 59.",
    "The quick brown fox jumps over the lazy dog. Hello, world! Hundreds of dogs.",
    "Numbers: 100 200 201 300 999 000 123 456 789 10 20 30 40 50 60 70 80 90.",
    "Tokenizers split text; some group digits, some split them one by one.",
    "naïve café – 東京 and 北京 are cities; emoji 🙂 too.",
] * 20
# Llama-3-like: digits grouped in runs of 1..3; Qwen-like: one digit per token.
_GROUPED = r"\p{N}{1,3}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+"
_SPLIT = r"\p{N}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+"


def _byte_bpe(pattern: str, specials: list[str], vocab_size: int = 600) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@lru_cache(maxsize=1)
def tiny_pair() -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """(student, teacher): a digit-grouping student with BOS/EOS, a digit-splitting teacher."""
    student = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(_GROUPED, ["<|begin_of_text|>", "<|end_of_text|>"]),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
    )
    teacher = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(_SPLIT, ["<|endoftext|>", "<|im_start|>"], vocab_size=500),
        eos_token="<|endoftext|>",
    )
    return student, teacher


@lru_cache(maxsize=4)
def tiny_projection(rank: int = 4, reverse_pass: bool = False) -> Projection:
    student, teacher = tiny_pair()
    return build_projection(
        student, teacher, ProjectionConfig(rank=rank, reverse_pass=reverse_pass)
    )


def _id(tok: PreTrainedTokenizerFast, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


def test_worked_example_201() -> None:
    student, teacher = tiny_pair()
    proj = tiny_projection()
    row = _id(student, "201")
    expected = [_id(teacher, d) for d in "201"]
    assert proj.indices[row, :3].tolist() == expected
    torch.testing.assert_close(
        proj.weights[row], torch.tensor([0.9 / 0.999, 0.09 / 0.999, 0.009 / 0.999, 0.0])
    )
    assert [round(w, 4) for w in proj.weights[row, :3].tolist()] == [0.9009, 0.0901, 0.0090]


def test_rows_sum_to_one_and_exact_matches_are_one_hot() -> None:
    student, teacher = tiny_pair()
    proj = tiny_projection()
    sums = proj.weights.sum(dim=1)
    empty = proj.weights[:, 0] == 0
    torch.testing.assert_close(sums[~empty], torch.ones(int((~empty).sum())))
    assert int(empty.sum()) == proj.meta["stats"]["empty_rows"]
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    exact = [(i, t_vocab[tok]) for tok, i in s_vocab.items() if tok in t_vocab]
    assert len(exact) > 100
    for s, t in exact:
        if s == student.bos_token_id:
            continue
        assert proj.indices[s, 0] == t and proj.weights[s].tolist() == [1.0, 0.0, 0.0, 0.0]
    # weights are sorted descending, padding slots hold index 0
    assert bool((proj.weights[:, :-1] >= proj.weights[:, 1:]).all())
    assert bool((proj.indices[proj.weights == 0] == 0).all())


def test_special_tokens_map_by_role_or_nowhere() -> None:
    student, teacher = tiny_pair()
    proj = tiny_projection()
    eos = proj.indices[student.eos_token_id, 0]
    assert eos == teacher.eos_token_id and proj.weights[student.eos_token_id, 0] == 1.0
    # The teacher has no BOS: the student's BOS row is empty, never re-tokenized as "<|", "begin"..
    assert proj.weights[student.bos_token_id].sum() == 0
    assert proj.meta["stats"]["empty_special_rows"] == 1


def test_repeated_piece_sums_and_rank_truncates() -> None:
    student, teacher = tiny_pair()
    zeros = _id(student, "000")
    proj = tiny_projection()
    # "000" -> "0","0","0": one entry holding 0.9 + 0.09 + 0.009, renormalized to 1.
    assert proj.indices[zeros, 0] == _id(teacher, "0") and proj.weights[zeros].tolist() == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]
    rank2 = tiny_projection(rank=2)
    row = _id(student, "201")
    assert rank2.indices.shape == (len(student), 2)
    torch.testing.assert_close(rank2.weights[row], torch.tensor([0.9 / 0.99, 0.09 / 0.99]))


def test_reverse_pass_leaves_exact_and_special_rows_alone() -> None:
    # Its additions are checked entry by entry on real Llama-3 x Qwen3 (tiny vocabularies trained
    # on one corpus have no teacher token whose student pieces include a non-exact row).
    forward, both = tiny_projection(), tiny_projection(reverse_pass=True)
    assert both.meta["rules"]["reverse_pass"] is True
    assert both.content_hash != forward.content_hash
    exact_rows = forward.weights[:, 0] == 1.0
    assert torch.equal(both.indices[exact_rows], forward.indices[exact_rows])
    assert torch.equal(both.weights[exact_rows], forward.weights[exact_rows])


def test_rebuild_gives_bit_identical_artifact(tmp_path) -> None:
    student, teacher = tiny_pair()
    a, b = build_projection(student, teacher), build_projection(student, teacher)
    assert a.content_hash == b.content_hash == a.meta["content_hash"]
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    for name in ("projection.safetensors", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    loaded = Projection.load(tmp_path / "a", student_tok=student, teacher_tok=teacher)
    assert torch.equal(loaded.indices, a.indices) and torch.equal(loaded.weights, a.weights)
    assert loaded.content_hash == a.content_hash
    a.save(tmp_path / "a")  # overwriting in place keeps a complete artifact, no temp dirs left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_load_checks_fingerprints_heads_and_integrity(tmp_path) -> None:
    student, teacher = tiny_pair()
    proj = tiny_projection()
    path = proj.save(tmp_path / "w")
    with pytest.raises(ValueError, match=r"meta\.student\.fingerprint .*rebuild W"):
        Projection.load(path, student_tok=teacher)
    with pytest.raises(ValueError, match="student_head_size=10 is smaller than the student"):
        Projection.load(path, student_head_size=10)
    with pytest.raises(ValueError, match="teacher_head_size=3 is smaller than the teacher"):
        Projection.load(path, teacher_head_size=3)
    padded = Projection.load(
        path, student_head_size=len(student) + 64, teacher_head_size=len(teacher) + 128
    )
    assert padded.indices.shape[0] == len(student) + 64
    assert padded.weights[len(student) :].abs().sum() == 0  # padded rows map nowhere
    assert padded.meta["V_T"] == len(teacher) + 128
    assert to_sparse(padded).shape == (len(student) + 64, len(teacher) + 128)
    with pytest.raises(FileNotFoundError, match="No projection artifact"):
        Projection.load(tmp_path / "missing")
    meta = (path / "meta.json").read_text().replace('"K": 4', '"K": 5')
    (path / "meta.json").write_text(meta)
    with pytest.raises(ValueError, match="content-hash check"):
        Projection.load(path)


def test_load_or_build_caches_by_inputs(tmp_path, monkeypatch) -> None:
    student, teacher = tiny_pair()
    first = load_or_build(student, teacher, cache_dir=tmp_path)
    assert len(list((tmp_path / "projections").iterdir())) == 1

    def fail(*args, **kwargs):
        raise AssertionError("W was rebuilt although it is cached")

    monkeypatch.setattr(projection_mod, "build_projection", fail)
    again = load_or_build(student, teacher, cache_dir=tmp_path, student_head_size=len(student) + 8)
    assert torch.equal(again.weights[: len(student)], first.weights)
    assert again.meta["V_S"] == len(student) + 8


def test_to_sparse_matches_rows_and_carries_gradients() -> None:
    proj = tiny_projection()
    v_t = proj.meta["V_T"]
    dense = to_sparse(proj).to_dense()
    expected = torch.zeros(proj.indices.shape[0], v_t)
    expected.scatter_add_(1, proj.indices, proj.weights)
    torch.testing.assert_close(dense, expected)
    param = torch.nn.Parameter(proj.weights.clone())
    p_s = torch.softmax(torch.randn(3, proj.indices.shape[0]), dim=-1)
    q = (to_sparse(proj, weights=param).t() @ p_s.t()).t()  # (3, V_T) = p_S W
    q.sum().backward()
    assert param.grad is not None and param.grad[~proj.slot_mask].abs().sum() == 0
    with pytest.raises(ValueError, match="V_T=2 is smaller"):
        to_sparse(proj, V_T=2)


def test_relaxed_common_pairs_collisions() -> None:
    indices = torch.tensor([[5, 0], [5, 0], [7, 5], [5, 0], [2, 3]])
    weights = torch.tensor([[0.7, 0.3], [0.9, 0.1], [0.5, 0.5], [0.9, 0.1], [1.0, 0.0]])
    proj = Projection(indices, weights, {"V_T": 8})
    s, t = relaxed_common_pairs(proj, threshold=0.6)
    # rows 0, 1, 3 all pick teacher 5: weight 0.9 wins, then the lower student id (1 over 3).
    assert s.tolist() == [1, 4] and t.tolist() == [5, 2]
    with pytest.raises(ValueError, match="threshold"):
        relaxed_common_pairs(proj, threshold=0)


def _metaspace_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_exact_common_pairs_trl_vs_canonical() -> None:
    student, _ = tiny_pair()
    sp = _metaspace_bpe()
    s_trl, _ = exact_common_pairs(student, sp, semantics="trl")
    s_can, t_can = exact_common_pairs(student, sp, semantics="canonical")
    the_s, the_t = student.get_vocab()["Ġthe"], sp.get_vocab()["▁the"]
    assert the_s not in s_trl.tolist()  # raw strings "Ġthe" != "▁the"
    assert (the_s, the_t) in zip(s_can.tolist(), t_can.tolist(), strict=True)
    assert len(set(t_can.tolist())) == len(t_can)  # 1-to-1
    with pytest.raises(ValueError, match="semantics='gold'"):
        exact_common_pairs(student, sp, semantics="gold")


@pytest.mark.parametrize(
    ("field", "value"),
    [("rank", 0), ("max_pieces", 2.5), ("first_weight", 0), ("decay", 1.5), ("reverse_pass", 1)],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"ProjectionConfig.{field}="):
        ProjectionConfig(**{field: value})
