"""Streaming pre-training corpora: local parquet/arrow/jsonl shards or a Hugging Face id.

The paper trains on ~4B tokens of a corpus with millions of documents; nothing here holds the
corpus in memory. Documents stream from *pieces* (local shard files; for a Hub id, one slice of
the streamed split per stream) into an incremental text packer and the same per-example encoder
as the in-memory path (:class:`xbench.engine.data.PairDataset`).

Partition. A job has ``S = world_size x max(1, num_workers)`` streams; stream ``rank x nw + w``
is DataLoader worker ``w`` of ``rank``. In epoch ``e`` the pieces are permuted by ``(seed, e)``
and stream ``s`` reads pieces ``s, s + S, s + 2S, ...`` of that order: streams are disjoint and
together read every document exactly once per epoch. A stream that finishes its pieces starts its
next epoch at once (streams are not synchronised); ``data/epoch`` logs the highest epoch any
stream has reached, and a line is logged whenever it grows.

Position. Every packed example carries ``(stream, epoch, k, doc)``: the first document *not* in
the example (``k``: index into the stream's pieces of that epoch). Packing restarted at that
document reproduces the rest of the stream exactly, so the main process keeps the position of
the last batch it consumed from each stream and a checkpoint stores those. DataLoader workers
hand out batches in turn; ``rotation`` makes worker 0 of a resumed loader the stream that was
due next, so a resumed run sees the batches of the uninterrupted one in the same order.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import IterableDataset, get_worker_info

from xbench.engine.data import PairDataset

STREAMING_SOURCES = ("shards", "hf")
_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "jsonl", ".json": "jsonl"}


def shard_files(cfg: DictConfig) -> list[str]:
    """The sorted local shard files named by ``data.files`` (a glob or a list of globs)."""
    patterns = [cfg.files] if isinstance(cfg.files, str) else list(cfg.files or [])
    files = sorted({f for p in patterns for f in glob.glob(str(p), recursive=True)})
    if not files:
        raise FileNotFoundError(
            f"data.files {patterns} matches no file; point it at parquet, arrow or jsonl shards."
        )
    for f in files:
        if Path(f).suffix not in _FORMATS:
            raise ValueError(
                f"data.files matched {f}, which is not .parquet, .arrow or .jsonl; narrow the glob."
            )
    return files


def detokenizer(name: str):
    """``ids -> text`` for a token-id column: ``gpt2`` (tiktoken, as ClimbMix ships its ids) or
    any tokenizer spec :func:`xbench.sources.load_tokenizer` knows (``llama3``, a local dir...)."""
    if name == "gpt2":
        import tiktoken

        enc = tiktoken.get_encoding("gpt2")
        return lambda ids: enc.decode(list(ids))
    from xbench.engine.models import load_tokenizer

    tok = load_tokenizer(name)
    return lambda ids: tok.decode(list(ids), skip_special_tokens=True)


class DocReader:
    """Documents of one piece as text, from a row offset on (``data.text_field`` or
    ``data.ids_field`` + ``data.detokenizer``)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.text_field = cfg.get("text_field")
        self.ids_field = cfg.get("ids_field")
        if bool(self.text_field) == bool(self.ids_field):
            raise ValueError(
                "data: set exactly one of data.text_field (a text column) and data.ids_field "
                "(a token-id column, with data.detokenizer)."
            )
        if self.ids_field and not cfg.get("detokenizer"):
            raise ValueError("data.ids_field needs data.detokenizer (e.g. gpt2 for ClimbMix).")
        self._decode = detokenizer(str(cfg.detokenizer)) if self.ids_field else None
        self.column = str(self.text_field or self.ids_field)

    def text(self, value: Any) -> str:
        return str(value) if self._decode is None else self._decode(value)

    def read(self, path: str, start: int) -> Iterator[str]:
        """Documents ``start, start + 1, ...`` of a local shard."""
        fmt = _FORMATS[Path(path).suffix]
        if fmt == "jsonl":
            with open(path) as fh:
                for i, line in enumerate(l for l in fh if l.strip()):
                    if i >= start:
                        yield self.text(json.loads(line)[self.column])
            return
        for i, value in enumerate(self._arrow_rows(path, fmt)):
            if i >= start:
                yield self.text(value)

    def _arrow_rows(self, path: str, fmt: str) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            if self.column not in pf.schema_arrow.names:
                raise ValueError(f"data: column {self.column!r} is not in {path}; set the field.")
            batches = pf.iter_batches(columns=[self.column], batch_size=1024)
        else:  # arrow IPC: a file, or a stream as `datasets` writes them
            try:
                reader = pa.ipc.open_file(path)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                batches = iter(pa.ipc.open_stream(path))
        for batch in batches:
            yield from batch.column(self.column).to_pylist()


class StreamingCorpus(IterableDataset):
    """Packed, encoded examples of a streamed corpus for one rank (see the module docstring).

    Args:
        cfg: the ``data`` config (``source`` shards|hf, ``files`` or ``name``/``split``,
            ``text_field`` or ``ids_field`` + ``detokenizer``, ``seq_len``, ``separator``).
        encoder: a :class:`PairDataset` (its tokenizers and aligners encode each packed text).
        rank, world: this rank and the number of ranks.
        seed: permutes pieces per epoch.
        positions: ``stream -> (epoch, k, doc)`` to resume from (missing streams start at 0).
        rotation: worker ``w`` serves stream slot ``(w + rotation) % num_workers``.
    """

    def __init__(
        self,
        cfg: DictConfig,
        encoder: PairDataset,
        rank: int,
        world: int,
        seed: int,
        positions: dict[int, tuple[int, int, int]] | None = None,
        rotation: int = 0,
    ) -> None:
        self.cfg = cfg
        self.encoder = encoder
        self.rank, self.world, self.seed = rank, world, seed
        self.workers = max(1, int(cfg.num_workers))
        self.positions = dict(positions or {})
        self.rotation = rotation
        self.reader = DocReader(cfg)
        self.files = shard_files(cfg) if cfg.source == "shards" else []
        n_streams = world * self.workers
        if self.files and len(self.files) < n_streams:
            raise ValueError(
                f"data.files has {len(self.files)} shards for {n_streams} streams (world size "
                f"{world} x data.num_workers {self.workers}); every stream needs at least one "
                "shard: split the corpus into more files or lower data.num_workers."
            )

    @property
    def n_streams(self) -> int:
        return self.world * self.workers

    def stream_pieces(self, stream: int, epoch: int) -> list[str]:
        """Local shards this stream reads in ``epoch``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        return [self.files[j] for j in order[stream :: self.n_streams]]

    def _docs(self, stream: int, epoch: int, k0: int, doc0: int) -> Iterator[tuple[int, int, str]]:
        """``(k, doc, text)`` of one stream from a position to the end of its epoch."""
        if self.cfg.source == "hf":
            yield from self._hf_docs(stream, epoch, doc0)
            return
        for k, path in enumerate(self.stream_pieces(stream, epoch)):
            if k < k0:
                continue
            for i, text in enumerate(self.reader.read(path, doc0 if k == k0 else 0)):
                yield k, (doc0 if k == k0 else 0) + i, text

    def _hf_docs(self, stream: int, epoch: int, doc0: int) -> Iterator[tuple[int, int, str]]:
        # Streams the split (no download of the whole split): one node-slice per stream, shuffled
        # per epoch by the dataset's shard order and a buffer. Needs the Hub: not run offline.
        import datasets
        from datasets.distributed import split_dataset_by_node

        subset = self.cfg.get("subset")
        ds = datasets.load_dataset(
            str(self.cfg.name), subset, split=str(self.cfg.split), streaming=True
        )
        ds = ds.shuffle(seed=self.seed, buffer_size=int(self.cfg.shuffle_buffer))
        ds.set_epoch(epoch)
        ds = split_dataset_by_node(ds, rank=stream, world_size=self.n_streams).skip(doc0)
        for i, row in enumerate(ds):
            yield 0, doc0 + i, self.reader.text(row[self.reader.column])

    def _stream(self, stream: int) -> Iterator[dict[str, Any]]:
        """Packed examples of one stream, forever, from its saved position."""
        tok, cfg = self.encoder.student, self.cfg
        budget, sep = int(cfg.seq_len) - 1, str(cfg.separator)  # one token for a BOS
        sep_len = len(tok(sep, add_special_tokens=False)["input_ids"])
        epoch, k0, doc0 = self.positions.get(stream, (0, 0, 0))
        cur: list[str] = []
        keys: list[tuple[int, int, int]] = []
        used = 0
        while True:
            for k, doc, text in self._docs(stream, epoch, k0, doc0):
                if not text.strip():
                    continue
                enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
                n = len(enc["input_ids"])
                if n > budget:  # cut long documents at a token boundary
                    text, n = text[: enc["offset_mapping"][budget - 1][1]], budget
                if cur and used + sep_len + n > budget:
                    yield self._example(stream, sep.join(cur), keys, (epoch, k, doc))
                    cur, keys, used = [], [], 0
                used += n + (sep_len if cur else 0)
                cur.append(text)
                keys.append((epoch, k, doc))
            epoch, k0, doc0 = epoch + 1, 0, 0

    def _example(
        self, stream: int, text: str, keys: list[tuple[int, int, int]], nxt: tuple[int, int, int]
    ) -> dict[str, Any]:
        item = self.encoder.encode(text)
        item["position"] = (stream, *nxt)
        # (stream, epoch, k, doc) of every document packed into the example: counted by tests.
        item["docs"] = [(stream, *key) for key in keys]
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        w = 0 if info is None else info.id
        stream = self.rank * self.workers + (w + self.rotation) % self.workers
        if info is None and self.workers > 1:
            raise ValueError("StreamingCorpus with data.num_workers > 1 needs DataLoader workers.")
        return self._stream(stream)


class StreamState:
    """What the main process knows of the streams: positions consumed, epoch, tokens, batches."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.positions: dict[int, tuple[int, int, int]] = {}
        self.batches = 0  # consumed since the run began (across resumes)
        self.epoch = 0

    def consume(self, batch: dict[str, Any]) -> None:
        stream, *pos = batch["position"]
        self.positions[int(stream)] = tuple(int(x) for x in pos)  # type: ignore[assignment]
        self.epoch = max(self.epoch, max(d[1] for d in batch["docs"]))
        self.batches += 1

    @property
    def rotation(self) -> int:
        return self.batches % self.workers

    def state_dict(self) -> dict[str, Any]:
        return {"positions": dict(self.positions), "batches": self.batches, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.positions = {int(k): tuple(v) for k, v in state["positions"].items()}  # type: ignore[misc]
        self.batches, self.epoch = int(state["batches"]), int(state["epoch"])
