"""Corpora, packing, deterministic step batches, and the cross-tokenizer collator.

Packing is done on *text*, not ids: every tokenizer must see exactly the same characters for
the alignment to be exact, so documents are grouped by their student token count and each
packed example is one string that every tokenizer encodes on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from xbench import sources
from xbench.tokenpair.align import align as align_pair
from xbench.tokenpair.align import collate_alignments


def load_texts(cfg: DictConfig) -> list[str]:
    """The training corpus named by ``cfg`` (the ``data`` config group).

    ``source``: a plug-in's scheme (``mini``: the miniature world's train split, through
    :mod:`xbench.sources`) or ``jsonl`` (``path``, one object a line, ``text_field`` or
    GSM8K-style ``question``/``answer``): small corpora held in memory. Pre-training corpora
    (``shards``, ``hf``) stream through :mod:`xbench.engine.corpus` instead.
    """
    src = cfg.source
    texts = sources.corpus(src, cfg)
    if texts is None and src == "jsonl":
        path = Path(cfg.path)
        if not path.exists():
            raise FileNotFoundError(f"data.path {path} does not exist; point it at a JSONL file.")
        texts = [_doc_text(json.loads(line), cfg) for line in path.read_text().splitlines() if line]
    elif texts is None:
        known = ", ".join([*sources.plugins(), "jsonl", "shards", "hf"])
        raise ValueError(f"data.source must be one of {known}; got {src!r}.")
    texts = [t for t in texts if t.strip()]
    if cfg.get("max_docs") is not None:
        texts = texts[: int(cfg.max_docs)]
    if not texts:
        raise ValueError(f"data: the {src} corpus is empty; check data.path / data.name.")
    return texts


def _doc_text(row: dict[str, Any], cfg: DictConfig) -> str:
    field = cfg.get("text_field", "text")
    if field in row:
        return str(row[field])
    if "question" in row and "answer" in row:
        return f"Question: {row['question']}\nAnswer: {row['answer']}"
    raise ValueError(f"data.text_field {field!r} is not in the JSONL rows; set data.text_field.")


def pack(texts: Sequence[str], tok: PreTrainedTokenizerBase, seq_len: int, sep: str) -> list[str]:
    """Greedily join documents with ``sep`` while the student sequence fits ``seq_len``.

    One token is reserved for a BOS; a document longer than the budget is cut at a token
    boundary (by character offset, so the text stays valid for every tokenizer).
    """
    budget = seq_len - 1
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    sep_len = len(tok(sep, add_special_tokens=False)["input_ids"])
    out: list[str] = []
    cur: list[str] = []
    used = 0
    for text, ids, offs in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        n = len(ids)
        if n > budget:  # cut long documents; ends at a token boundary
            text, n = text[: offs[budget - 1][1]], budget
        extra = n + (sep_len if cur else 0)
        if cur and used + extra > budget:
            out.append(sep.join(cur))
            cur, used = [], 0
            extra = n
        cur.append(text)
        used += extra
    if cur:
        out.append(sep.join(cur))
    return out


@dataclass
class Side:
    """One teacher as the data pipeline sees it."""

    tok: PreTrainedTokenizerBase
    same_tokenizer: bool  # True: reuse the student ids, no alignment
    aligner: str = "offset"


class PairDataset(Dataset):
    """Packed texts encoded by the student and every teacher, with per-teacher alignments.

    Tokenization and alignment happen here, in ``__getitem__``, so they run in DataLoader
    workers and never inside the training step.
    """

    def __init__(
        self,
        texts: Sequence[str],
        student: PreTrainedTokenizerBase,
        teachers: Sequence[Side],
        max_len: int,
    ) -> None:
        self.texts = list(texts)
        self.student = student
        self.teachers = list(teachers)
        self.max_len = max_len
        # Character offsets exist only for fast (Rust) tokenizers; the offset aligner needs them.
        for i, side in enumerate(self.teachers):
            if side.same_tokenizer or side.aligner != "offset":
                continue
            for name, tok in (("student", student), (f"teachers[{i}]", side.tok)):
                if not getattr(tok, "is_fast", False):
                    raise ValueError(
                        f"{name}.tokenizer gives no character offsets (a slow tokenizer), which "
                        "train.aligner=offset needs; load its fast version or set train.aligner=dp."
                    )
        self._offsets = {id(t.tok): getattr(t.tok, "is_fast", False) for t in self.teachers}

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.encode(self.texts[i])

    def encode(self, text: str) -> dict[str, Any]:
        """One packed text as student ids plus, per teacher, its ids and alignment."""
        s = self.student(
            text,
            return_offsets_mapping=getattr(self.student, "is_fast", False),
            truncation=True,
            max_length=self.max_len,
        )
        item: dict[str, Any] = {"input_ids": s["input_ids"], "teachers": []}
        for side in self.teachers:
            if side.same_tokenizer:
                item["teachers"].append(None)
                continue
            t = side.tok(text, return_offsets_mapping=self._offsets[id(side.tok)])
            al = align_pair(
                s["input_ids"],
                t["input_ids"],
                student_tokenizer=self.student,
                teacher_tokenizer=side.tok,
                student_offsets=s.get("offset_mapping"),
                teacher_offsets=t.get("offset_mapping"),
                method=side.aligner,
            )
            item["teachers"].append({"input_ids": t["input_ids"], "align": al})
        return item


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


class Collator:
    """Pads a micro-batch and counts its loss units before any forward pass.

    The counts (``ce`` target tokens, per-teacher valid chunks or tokens) let the loop normalise
    every loss by the *global* number of units of the whole optimizer step, so results do not
    change with gradient accumulation or world size.
    """

    def __init__(self, student_pad: int, teacher_pads: Sequence[int]) -> None:
        self.student_pad = student_pad
        self.teacher_pads = list(teacher_pads)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        ids = _pad([it["input_ids"] for it in items], self.student_pad)
        mask = _pad([[1] * len(it["input_ids"]) for it in items], 0)
        labels = ids.masked_fill(mask == 0, -100)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        n_tok = int((labels[:, 1:] != -100).sum())  # logits at p predict p+1
        counts = {"ce": n_tok}
        teachers = []
        for k, pad in enumerate(self.teacher_pads):
            sides = [it["teachers"][k] for it in items]
            if sides[0] is None:  # same tokenizer: per-token KD on the student ids
                teachers.append(None)
                counts[f"t{k}"] = n_tok
                continue
            t_ids = _pad([s["input_ids"] for s in sides], pad)
            t_mask = _pad([[1] * len(s["input_ids"]) for s in sides], 0)
            al = collate_alignments([s["align"] for s in sides], ids.shape[1], t_ids.shape[1])
            teachers.append({"input_ids": t_ids, "attention_mask": t_mask, "align": al})
            counts[f"t{k}"] = int(al.chunk_mask.sum())
        batch["teachers"] = teachers
        batch["counts"] = counts
        if "position" in items[0]:  # a streamed corpus (xbench.engine.corpus): where the batch ends
            batch["position"] = items[-1]["position"]
            batch["docs"] = [d for it in items for d in it["docs"]]
        return batch


class StepBatches(Sampler[list[int]]):
    """Deterministic micro-batch indices addressed by (step, micro-step, rank).

    Example ``k`` of the infinite stream is ``perm_e[k mod N]`` with ``e = k // N`` and
    ``perm_e`` a permutation seeded by ``(seed, e)``. Optimizer step ``s`` consumes stream
    positions ``[s*G, (s+1)*G)``; within it, rank ``r``'s micro-step ``m`` takes the slice
    ``[(m*W + r)*b, (m*W + r + 1)*b)``. Any (world size, accumulation) split of the same global
    batch therefore sees the same examples, and resuming at step ``s`` needs no iterator state.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        micro_batch: int,
        world: int,
        rank: int,
        seed: int,
        start_step: int,
        total_steps: int,
    ) -> None:
        if global_batch % (micro_batch * world):
            raise ValueError(
                f"train.global_batch_size={global_batch} is not divisible by "
                f"train.micro_batch_size={micro_batch} x world_size={world}; change one of them."
            )
        self.n, self.g, self.b, self.w, self.r = n, global_batch, micro_batch, world, rank
        self.accum = global_batch // (micro_batch * world)
        self.seed, self.start, self.total = seed, start_step, total_steps
        self._perms: dict[int, np.ndarray] = {}

    def _example(self, k: int) -> int:
        e = k // self.n
        if e not in self._perms:
            self._perms = {e: np.random.default_rng([self.seed, e]).permutation(self.n)}
        return int(self._perms[e][k % self.n])

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            base = step * self.g
            for m in range(self.accum):
                lo = base + (m * self.w + self.r) * self.b
                yield [self._example(k) for k in range(lo, lo + self.b)]
