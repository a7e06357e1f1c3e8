"""Training metrics: metrics.jsonl (the source of truth), wandb (optional), a progress bar."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from xbench.io import append_jsonl, truncate_jsonl


def numeral_ids(canonical: list[str], min_digits: int = 2) -> torch.Tensor:
    """Ids of tokens whose text (leading space ignored) is a numeral of >= ``min_digits`` digits.

    These are the tokens GOLD pushes down with a digit-splitting teacher (the paper's
    uncommon-token failure); their probability mass is watched during training.
    """
    ids = [
        i
        for i, s in enumerate(canonical)
        if (t := s.lstrip(" ")).isascii() and t.isdigit() and len(t) >= min_digits
    ]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def numeral_stats(
    logits: torch.Tensor, labels: torch.Tensor, num_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Sums for the numeral watch (divide by the returned counts).

    Returns ``mass`` (student probability on multi-digit numeral tokens, summed over predicted
    positions), ``target_prob`` (probability of the correct token, summed over positions whose
    target *is* a multi-digit numeral) and their counts.
    """
    # One row at a time in fp32 via log-sum-exp: a full (B, T, V) fp32 softmax copy of the
    # logits cost gigabytes at paper scale on every logged step.
    tgt = labels[:, 1:]
    valid = tgt != -100
    num_ids = num_ids.to(logits.device)
    is_num = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    is_num[num_ids] = True
    tgt_safe = tgt.clamp_min(0)
    tgt_is_num = valid & is_num[tgt_safe]
    mass_rows, tprob_rows = [], []
    for b in range(logits.shape[0]):
        row = logits[b, :-1].float()  # (T-1, V): position p predicts token p+1
        lse = row.logsumexp(-1)  # (T-1,)
        num = row.index_select(-1, num_ids) if len(num_ids) else row[:, :0]
        mass_rows.append((num - lse[:, None]).exp().sum(-1))
        tprob_rows.append((row.gather(-1, tgt_safe[b, :, None]).squeeze(-1) - lse).exp())
    mass, tprob = torch.stack(mass_rows), torch.stack(tprob_rows)  # (B, T-1)
    return {
        "mass": (mass * valid).sum(),
        "mass_n": valid.sum(),
        "target_prob": (tprob * tgt_is_num).sum(),
        "target_n": tgt_is_num.sum(),
    }


class MetricsLogger:
    """Appends one JSON object per logged step; mirrors it to wandb when enabled (rank 0 only)."""

    def __init__(
        self,
        path: Path,
        *,
        enabled: bool,
        wandb_cfg: dict[str, Any] | None,
        total_steps: int,
        start_step: int,
        run_name: str,
        config: dict[str, Any],
    ) -> None:
        self.path, self.enabled = path, enabled
        self._wandb = None
        if enabled:
            truncate_jsonl(path, start_step)  # drop records past the checkpoint we resume from
            if wandb_cfg and wandb_cfg.get("enabled"):
                import wandb

                os.environ.setdefault("WANDB_MODE", wandb_cfg["mode"])
                self._wandb = wandb.init(
                    project=wandb_cfg["project"],
                    name=run_name,
                    config=config,
                    dir=str(path.parent),
                    resume="allow",
                    id=wandb_cfg.get("id") or None,
                )
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not enabled,
            desc=run_name,
            dynamic_ncols=True,
            mininterval=2.0,
        )
        self._t = time.time()

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _num(v) for k, v in record.items()}}
        append_jsonl(self.path, row)
        if self._wandb is not None:
            self._wandb.log(row, step=step)
        self.bar.set_postfix(loss=f"{row.get('train/loss', float('nan')):.3f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.enabled:
            self.bar.update(n)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            if self._wandb is not None:
                self._wandb.finish()


def _num(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item()
    return v
