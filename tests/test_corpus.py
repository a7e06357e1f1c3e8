"""The streamed pre-training corpus on a local 4-shard parquet corpus made here: 2 ranks x 2
DataLoader workers read every document exactly once per epoch; a run killed mid-epoch and resumed
equals the uninterrupted one; the epoch shows in metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from engine_utils import cell_cfg, max_diff, run_module, state, torchrun
from torch.utils.data import DataLoader

from xbench.engine.corpus import StreamingCorpus
from xbench.engine.data import Collator, PairDataset
from xbench.engine.models import load_tokenizer
from xbench.io import read_jsonl

SHARDS, DOCS = 4, 12  # documents per shard


def _corpus(root: Path, fmt: str = "parquet") -> Path:
    """4 shards of short arithmetic documents; each names its shard and row."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(SHARDS):
        texts = [
            f"Doc {s}-{i}: Mia has {i + 2} apples and gets {s + 3 * (i % 4)} more."
            for i in range(DOCS)
        ]
        if fmt == "parquet":
            pq.write_table(pa.table({"text": texts}), root / f"part-{s:03d}.parquet")
        else:
            with open(root / f"part-{s:03d}.jsonl", "w") as fh:
                fh.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return root


def _data_overrides(root: Path, ext: str = "parquet") -> list[str]:
    return [
        "data=shards",
        f"data.files={root}/*.{ext}",
        "data.seq_len=64",
        "data.num_workers=2",
    ]


def _loader(cfg, rank: int) -> DataLoader:
    tok = load_tokenizer(cfg.student.tokenizer)
    corpus = StreamingCorpus(cfg.data, PairDataset([], tok, [], 48), rank, 2, int(cfg.seed))
    return DataLoader(corpus, batch_size=2, collate_fn=Collator(0, []), num_workers=2)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_two_ranks_two_workers_read_every_document_once_per_epoch(tmp_path: Path, fmt: str) -> None:
    cfg = cell_cfg("cell=ce", *_data_overrides(_corpus(tmp_path / "c", fmt), fmt))
    seen: Counter = Counter()
    epochs_done = {}
    for rank in (0, 1):
        batches = iter(_loader(cfg, rank))
        # Read until both of this rank's streams are in epoch 2: epochs 0 and 1 are complete.
        while not epochs_done.get(rank):
            batch = next(batches)
            for stream, epoch, k, doc in batch["docs"]:
                seen[(epoch, stream, k, doc)] += 1
            streams = {s for (e, s, _, _) in seen if e == 2 and s // 2 == rank}
            epochs_done[rank] = len(streams) == 2
    for epoch in (0, 1):
        keys = [key for key in seen if key[0] == epoch]
        assert len(keys) == SHARDS * DOCS  # every document of the corpus...
        assert all(seen[key] == 1 for key in keys)  # ...exactly once
        # ... each stream reading one whole shard of its own (4 shards, 4 streams).
        per_stream = Counter(s for (_, s, _, _) in keys)
        assert per_stream == {s: DOCS for s in range(4)}
    # Streams read different shards in different epochs (pieces are permuted per epoch).
    tok = load_tokenizer(cfg.student.tokenizer)
    corpus = StreamingCorpus(cfg.data, PairDataset([], tok, [], 48), 0, 2, int(cfg.seed))
    assert [corpus.stream_pieces(s, 0) for s in range(4)] != [
        corpus.stream_pieces(s, 1) for s in range(4)
    ]


def test_shard_formats_and_token_id_columns_read_the_same_documents(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from xbench.engine.corpus import DocReader

    texts = [f"Doc {i}: Mia has {i + 2} apples." for i in range(7)]
    tok = load_tokenizer("llama3")
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    pq.write_table(pa.table({"text": texts, "tokens": ids}), tmp_path / "a.parquet")
    with pa.ipc.new_file(tmp_path / "a.arrow", pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": texts}))
    with pa.ipc.new_stream(tmp_path / "s.arrow", pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": texts}))  # the IPC stream format `datasets` writes
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    text_cfg = OmegaConf.create({"text_field": "text", "ids_field": None})
    for name in ("a.parquet", "a.arrow", "s.arrow", "a.jsonl"):
        assert list(DocReader(text_cfg).read(str(tmp_path / name), 0)) == texts, name
        assert list(DocReader(text_cfg).read(str(tmp_path / name), 5)) == texts[5:], name
    ids_cfg = OmegaConf.create({"text_field": None, "ids_field": "tokens", "detokenizer": "llama3"})
    assert list(DocReader(ids_cfg).read(str(tmp_path / "a.parquet"), 0)) == texts
    with pytest.raises(ValueError, match=r"data\.ids_field needs data\.detokenizer"):
        DocReader(OmegaConf.create({"text_field": None, "ids_field": "tokens"}))
    with pytest.raises(ValueError, match="column 'body' is not in"):
        list(
            DocReader(OmegaConf.create({"text_field": "body"})).read(str(tmp_path / "a.parquet"), 0)
        )


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, *torchrun("-m", "xbench.train", *args)]


def test_two_rank_run_killed_mid_epoch_resumes_like_the_uninterrupted_run(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    args = [
        "+experiment=mini_smoke",
        "cell=ce",
        "train.device=cpu",
        "train.parallel=ddp",
        "train.steps=8",
        "train.ckpt_every=1",
        "train.keep_checkpoints=3",
        "train.log_every=1",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        *_data_overrides(root),
    ]
    run_module(_torchrun(*args, f"run_dir={tmp_path / 'full'}")[1:], cwd=tmp_path)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _torchrun(*args, f"run_dir={killed}"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_00000003.pt").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun, both ranks and their DataLoader workers
    proc.wait()
    assert not (killed / "checkpoints" / "step_00000008.pt").exists()
    run_module(_torchrun(*args, f"run_dir={killed}")[1:], cwd=tmp_path)
    assert max_diff(state(tmp_path / "full"), state(killed)) == 0.0
    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    resumed = read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == list(range(1, 9))
    for key in ("train/loss", "data/epoch", "data/tokens"):
        assert [r[key] for r in resumed] == [r[key] for r in full], key
    # The 48 documents (~30 student tokens each) pack about 2 to a 64-token sequence: 8 steps
    # of 4 sequences read past one epoch, and the kill happened in epoch 0.
    epochs = [r["data/epoch"] for r in full]
    assert epochs[2] == 0 and epochs[-1] == 1


def test_token_budget_ends_the_run_and_tokens_are_logged(tmp_path: Path) -> None:
    from xbench.engine.session import train

    over = _data_overrides(_corpus(tmp_path / "c"))
    over = [o for o in over if not o.startswith("data.num_workers")] + ["data.num_workers=0"]
    cfg = cell_cfg(
        "cell=ce", "train.steps=50", "train.log_every=1", "data.token_budget=1000", *over
    )
    summary = train(cfg, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert summary["steps"] == rows[-1]["step"] < 50
    assert rows[-1]["data/tokens"] >= 1000 > rows[-2]["data/tokens"]
    assert [r["data/epoch"] for r in rows] == [0] * len(rows)
