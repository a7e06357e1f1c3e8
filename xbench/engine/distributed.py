"""torch.distributed from torchrun or SLURM variables: gloo on CPU, NCCL on GPU, one code path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's global rank from the launcher's environment, before any init."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _env_from_slurm() -> None:
    """Export torchrun-style variables from SLURM's when srun started the ranks."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    import submitit  # only needed on SLURM

    # Reads SLURM_* (job node list, procid, localid) and sets MASTER_ADDR/PORT, RANK, ...
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Initialise the process group if the environment describes more than one rank.

    Args:
        device: ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
        timeout_s: the process group's collective timeout (``None``: torch's default, 10 min
            for NCCL and 30 min for gloo). Tests set it small to prove nothing waits on it.

    Returns:
        The rank layout and the device this rank computes on.
    """
    _env_from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no GPU is visible; set device=cpu.")
    dev = f"cuda:{local}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        kw = {} if timeout_s is None else {"timeout": timedelta(seconds=float(timeout_s))}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **kw)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op on one rank)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of parameters that no DDP/FSDP wrapper owns (W) over ranks.

    With every rank holding the same values and the same averaged gradient, the same optimizer
    update keeps them bit-identical across ranks (one flat all-reduce; its result is the same
    tensor on every rank). A parameter without a gradient on some rank (no units of that teacher
    in its micro-batches) contributes zeros, so every rank joins the collective.
    """
    if not params or world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def max_rank_diff(params: Sequence[torch.Tensor]) -> float:
    """Largest |x_rank - x_rank0| over ranks and elements (0.0 when the copies are identical)."""
    if not params or world_size() == 1:
        return 0.0
    mine = torch.cat([p.detach().reshape(-1) for p in params])
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    diff = (mine - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum of a tensor over ranks in place (no-op on one rank)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_student(model: torch.nn.Module, info: DistInfo, strategy: str) -> torch.nn.Module:
    """Wrap the student for data parallelism.

    ``ddp`` replicates the student (the default; gradients are averaged over ranks, which the
    loop compensates so that losses are normalised by the *global* unit count). ``fsdp`` shards
    parameters, gradients and optimizer state (FSDP2 ``fully_shard``) for students that do not
    fit one GPU. Teachers are never wrapped: they run forward only.
    """
    if info.world_size == 1 or strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if info.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        return fully_shard_model(model)
    raise ValueError(f"train.parallel must be one of none, ddp, fsdp; got {strategy!r}.")


def fully_shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: shard every decoder layer, then the root (embeddings, head), in place."""
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(getattr(model, "model", model), "layers", []):
        fully_shard(layer)
    fully_shard(model)
    return model


def world_size() -> int:
    """Ranks in the process group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
