"""Teacher forward passes: online (eval mode, no grad) or from an on-disk top-k logit cache.

The cache stores, per teacher and per micro-batch content, the teacher's top-k logits
(values, indices) in one file. Every cell of a sweep that shares the teacher and the data reads
the same files, so a sweep over M methods pays for one teacher pass, not M. Keys hash the
teacher's identity (model source + tokenizer fingerprint), k, and the exact input ids.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from xbench.io import atomic_path

# Logits outside the cached top-k: far below any kept logit, yet finite so that
# p * log p stays 0 (not NaN) in every divergence.
_FLOOR = -1.0e4


class TeacherRunner:
    """Runs one teacher; counts real forward passes (``forwards``) for tests and logs."""

    def __init__(
        self,
        model: PreTrainedModel,
        identity: str,
        *,
        top_k: int,
        cache_dir: str | None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.top_k = top_k
        self.cache_dir = (
            Path(cache_dir) / hashlib.sha256(identity.encode()).hexdigest()[:16]
            if cache_dir
            else None
        )
        self.forwards = 0

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V_T)

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, V_T) teacher logits; from the cache (top-k, rest at a floor) when enabled."""
        if self.cache_dir is None:
            return self._forward(ids, mask)
        key = hashlib.sha256(
            ids.cpu().numpy().tobytes() + mask.cpu().numpy().tobytes() + str(self.top_k).encode()
        ).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.pt"
        if path.exists():
            vals, idx, vocab = torch.load(path, map_location=ids.device, weights_only=True)
        else:
            full = self._forward(ids, mask)
            vocab = full.shape[-1]
            k = min(self.top_k, vocab)
            vals, idx = full.topk(k, dim=-1)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save((vals.cpu(), idx.cpu().int(), vocab), tmp)
            with open(self.cache_dir / "forwards.log", "a") as fh:  # the forward-pass count
                fh.write(f"{os.getpid()} {key}\n")
        out = torch.full((*vals.shape[:-1], int(vocab)), _FLOOR, device=ids.device)
        return out.scatter_(-1, idx.long().to(ids.device), vals.to(ids.device))
