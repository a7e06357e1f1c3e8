"""A real SLURM cluster: submitit (single job, array, 2-task srun + gloo, timeout requeue) and
the plain sbatch template.

Needs the local one-node cluster (slurm/local_cluster.sh up; the fixture starts it as root).
The timeout/requeue test dominates (~40-60 s); the file takes about a minute on an idle node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle
import pytest
import submitit

if TYPE_CHECKING:
    from slurm_fixtures import SlurmCluster

# Registers the `slurm_cluster` fixture (see slurm_fixtures' docstring for why not an import).
pytest_plugins = ["slurm_fixtures"]
pytestmark = pytest.mark.slurm
TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "sbatch_template.sh"

# Jobs unpickle the functions below in a fresh interpreter where this test module (imported by
# pytest from tests/, not from an installed package) is not importable: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def add(a: int, b: int) -> int:
    return a + b


def square(x: int) -> tuple[int, str]:
    return x * x, os.environ["SLURM_ARRAY_TASK_ID"]


def gloo_all_reduce(master_port: int) -> dict[str, int | float]:
    """One rank of a 2-task job: torch.distributed from SLURM's variables, one all_reduce."""
    import torch
    import torch.distributed as dist

    rank, world_size = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    # The env:// contract that the sbatch template also sets up (one node: loopback master).
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
    try:
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)  # sum over ranks: 1 + 2
        return {"rank": rank, "world_size": world_size, "sum": t.item()}
    finally:
        dist.destroy_process_group()


class OutlivesItsLimit(submitit.helpers.Checkpointable):
    """A 'training run' that needs longer than its 1-minute limit on the first attempt.

    Attempt 1 counts steps (one per second) into a checkpoint file and would go on for 10
    minutes; SLURM's --signal USR2 makes submitit call ``checkpoint`` and requeue the job.
    Attempt 2 finds the checkpoint and returns the progress it holds. It must be quick: every
    attempt gets the same 1-minute limit, so one still running at its own USR2 is requeued again.
    Every attempt appends a line to ``attempts.txt``.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def __call__(self) -> dict[str, int]:
        ckpt = self.workdir / "ckpt.txt"
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        with open(self.workdir / "attempts.txt", "a") as f:
            f.write(f"{time.time():.1f} restart={restart} resumed={ckpt.exists()}\n")
        if ckpt.exists():
            return {"steps_before_requeue": int(ckpt.read_text()), "restart": restart}
        for step in range(1, 601):
            time.sleep(1.0)
            ckpt.write_text(str(step))
        return {"steps_before_requeue": -1, "restart": restart}


def test_single_job_returns_result(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.executor(tmp_path).submit(add, 2, 3)
    slurm_cluster.wait(job, timeout_s=60)
    assert job.result() == 5


def test_job_array_returns_all_results(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    jobs = slurm_cluster.executor(tmp_path).map_array(square, [1, 2, 3])
    for job in jobs:
        slurm_cluster.wait(job, timeout_s=90)
    assert [job.result() for job in jobs] == [(1, "0"), (4, "1"), (9, "2")]
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1  # one array, three tasks


def test_two_tasks_srun_gloo_all_reduce(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    ex = slurm_cluster.executor(tmp_path, tasks_per_node=2, mem_gb=2)
    job = ex.submit(gloo_all_reduce, slurm_cluster.free_port())
    slurm_cluster.wait(job, timeout_s=120)
    results = job.results()  # one per task
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["world_size"] for r in results} == {2}
    assert {r["sum"] for r in results} == {3.0}


# Stands in for xbench.train under the sbatch template: checks the torch.distributed contract.
STUB_ENTRY = """
import json, os, sys
from datetime import timedelta
import torch
import torch.distributed as dist

dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
keys = ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK"]
out = {k: os.environ[k] for k in keys} | {"sum": t.item(), "argv": sys.argv[1:]}
with open(f"rank{os.environ['RANK']}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
"""


def test_sbatch_template_runs_two_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "stub_entry.py").write_text(STUB_ENTRY)
    cmd = [
        "sbatch", "--parsable", f"--partition={slurm_cluster.partition}",
        "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=2G", "--time=5",
        f"--output={tmp_path}/slurm-%j.out", str(TEMPLATE), "seed=3", "note=a b",
    ]  # fmt: skip
    env = os.environ | {"PYTHON": sys.executable, "XBENCH_ENTRY": "stub_entry"}
    job_id = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    state = slurm_cluster.wait_job_id(job_id, timeout_s=120)
    log = tmp_path / f"slurm-{job_id}.out"
    assert state == "COMPLETED", log.read_text() if log.exists() else state
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["RANK"] == info["LOCAL_RANK"] == str(r)
        assert info["WORLD_SIZE"] == "2"
        assert info["MASTER_PORT"] == str(20000 + int(job_id) % 20000)
        assert info["sum"] == 3.0
        # Overrides reach the entry point intact, after the run dir pinned to the job id.
        assert info["argv"] == [f"hydra.run.dir=runs/slurm-{job_id}", "seed=3", "note=a b"]
    assert ranks[0]["MASTER_ADDR"] == ranks[1]["MASTER_ADDR"] != ""


def _sacct_states(job_id: str) -> list[str]:
    # -D: every run of a requeued job, not only the last one; -X: allocations, not steps.
    out = subprocess.run(
        ["sacct", "-j", job_id, "-D", "-X", "-n", "-P", "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


# Slow-marked for the suite's 20-minute budget: the same real time limit -> USR2 -> requeue ->
# resume path runs end to end, through the Hydra launcher and xbench's checkpoints, in
# tests/test_sweep_slurm.py::test_slurm_time_limit_requeues_and_resumes_from_checkpoint. This one
# checks submitit's part alone (sacct states, the caught signal) and stays runnable with -m slow.
@pytest.mark.slow
def test_checkpointable_job_is_requeued_at_timeout(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # SLURM's smallest limit is 1 minute. USR2 is asked for 15 s before it; slurmctld checks
    # limits only every ~30 s and may signal that much earlier, so it lands 15-45 s into the job,
    # well before the kill at 60 s. (submitit's default, 90 s, would signal a 1-minute job at once.)
    ex = slurm_cluster.executor(tmp_path, timeout_min=1, slurm_signal_delay_s=15)
    t0 = time.monotonic()
    job = ex.submit(OutlivesItsLimit(tmp_path))
    slurm_cluster.wait(job, timeout_s=170)
    elapsed = time.monotonic() - t0

    result = job.result()
    attempts = (tmp_path / "attempts.txt").read_text().splitlines()
    assert len(attempts) == 2, attempts
    assert "restart=0 resumed=False" in attempts[0]
    assert "restart=1 resumed=True" in attempts[1]
    assert result["restart"] == 1
    # Attempt 1 was stopped by the signal, before its limit, after making some progress.
    assert 5 <= result["steps_before_requeue"] < 60
    # submitit caught USR2 and counted it as a timeout (for limits under 12.5 min it counts every
    # USR2 as one, preemptions included, using up max_num_timeout), then requeued.
    stderr = job.stderr() or ""
    # (Its "Requeued job" line races the kill that 'scontrol requeue' triggers: not asserted.)
    assert "Caught signal SIGUSR2" in stderr and "timed-out" in stderr
    # Accounting shows the requeue; sacct may lag the result file by a second or two.
    for _ in range(20):
        states = _sacct_states(job.job_id)
        if states[-1:] == ["COMPLETED"]:
            break
        time.sleep(0.5)
    assert states == ["REQUEUED", "COMPLETED"], states
    print(f"timeout+requeue round trip: {elapsed:.1f}s")
