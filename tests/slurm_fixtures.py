"""Pytest helpers for tests that need a real SLURM cluster (the local one from slurm/).

Register this module as a plugin in a test module and mark the tests::

    if TYPE_CHECKING:
        from slurm_fixtures import SlurmCluster

    pytest_plugins = ["slurm_fixtures"]  # provides the `slurm_cluster` fixture
    pytestmark = pytest.mark.slurm

    def test_x(slurm_cluster: SlurmCluster, tmp_path): ...

(Importing the module at runtime before pytest registers it makes pytest warn that it cannot
rewrite its asserts; importing the fixture by name trips ruff's F811 on every test argument.)

``slurm_cluster`` uses a cluster that is already up (``slurm/local_cluster.sh status``), else
brings one up when SLURM is installed and we are root, else skips with "SLURM not available: ...".
It never stops the cluster: other sessions may be using it; CI brings it down in its trap.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = REPO / "slurm" / "local_cluster.sh"
STATE_DIR = Path(os.environ.get("XBENCH_SLURM_DIR", "/tmp/xbench-slurm"))


@dataclass(frozen=True)
class SlurmCluster:
    """Handle on the running cluster: where its config is and how to submit to it politely."""

    conf: Path
    partition: str = "debug"

    def executor(self, folder: Path, **params: Any):
        """A submitit AutoExecutor pinned to SLURM, with small defaults.

        The machine is shared and small: one CPU and 1 GB per task unless the test asks for more,
        so jobs from concurrent test runs do not block one another.
        """
        import submitit

        # cluster="slurm": fail loudly instead of silently falling back to local processes.
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        defaults = {"slurm_partition": self.partition, "cpus_per_task": 1, "mem_gb": 1}
        ex.update_parameters(**{"timeout_min": 5, **defaults, **params})
        return ex

    @staticmethod
    def wait(job, timeout_s: float) -> None:
        """Block until a submitit job is done; on timeout cancel it and fail with its logs.

        ``job.result()`` alone waits forever when a job is stuck pending (e.g. the node is full).
        """
        deadline = time.monotonic() + timeout_s
        while not job.done():
            if time.monotonic() > deadline:
                state = job.state
                job.cancel(check=False)
                pytest.fail(
                    f"SLURM job {job.job_id} not done after {timeout_s:.0f}s (state {state}).\n"
                    f"stdout:\n{job.stdout()}\nstderr:\n{job.stderr()}"
                )
            time.sleep(0.5)

    @staticmethod
    def wait_job_id(job_id: str, timeout_s: float) -> str:
        """Poll a plain sbatch job until it ends; return its final JobState (e.g. COMPLETED).

        Faster than ``sbatch --wait``, whose polling backs off to tens of seconds. scontrol
        still knows a finished job for MinJobAge (300 s) and, unlike sacct, does not lag.
        On timeout the job is cancelled and the test fails.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            out = subprocess.run(
                ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True
            ).stdout
            fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
            state = fields.get("JobState", "UNKNOWN")
            if state not in {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"}:
                return state
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job_id], check=False)
                pytest.fail(f"SLURM job {job_id} still {state} after {timeout_s:.0f}s")
            time.sleep(0.5)

    @staticmethod
    def free_port() -> int:
        """An unused TCP port on loopback (for MASTER_PORT)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _local_cluster(cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LOCAL_CLUSTER), cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster, or a skip that says why there is none."""
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("SLURM not available: not installed (run slurm/install_deps.sh as root)")
    if _local_cluster("status", timeout=60).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("SLURM not available: cluster is down and only root can start it")
        up = _local_cluster("up", timeout=180)
        if up.returncode != 0:
            # Installed and allowed to start, yet broken: that is a failure, not a skip.
            pytest.fail(f"slurm/local_cluster.sh up failed:\n{up.stdout}\n{up.stderr}")
    conf = STATE_DIR / "etc" / "slurm.conf"
    # submitit shells out to sbatch/sacct/scontrol; jobs inherit the variable (--export=ALL) so
    # submitit's in-job 'scontrol requeue' finds the cluster too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        yield SlurmCluster(conf=conf)
