"""A basic-sweeper variant that never launches a cell whose run directory is already done.

Hydra's basic sweeper launches every job of the grid; xbench cells also skip themselves when
their run directory says ``done`` for the same config hash, but on SLURM even a skipping job
costs a queue slot. This sweeper composes each job's config first, finds its run directory
(``hydra.sweep.dir/hydra.sweep.subdir``) and drops the finished ones before launching, so a rerun
of a finished sweep launches nothing and a half-finished one launches only what is left.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

log = logging.getLogger("xbench.sweep")


@dataclass
class XbenchSweeperConf:
    _target_: str = "hydra_plugins.xbench_sweeper.xbench_sweeper.XbenchSweeper"
    # No `from __future__ import annotations` and no PEP 604 unions here: Hydra executes plugin
    # modules without registering them in sys.modules, which dataclasses then cannot resolve.
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = field(default=None)  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/sweeper", name="xbench", node=XbenchSweeperConf, provider="xbench"
)


class XbenchSweeper(BasicSweeper):
    """Basic sweeper + skip finished cells before launching."""

    def split_arguments(  # type: ignore[override]
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        batches = BasicSweeper.split_arguments(overrides, None)
        jobs = [job for batch in batches for job in batch]
        todo = [job for job in jobs if not self._done(job)]
        if len(todo) < len(jobs):
            log.info(
                "%d of %d cells are done already and are not launched",
                len(jobs) - len(todo),
                len(jobs),
            )
        size = max_batch_size or len(todo) or 1
        return [todo[i : i + size] for i in range(0, len(todo), size)]

    def _done(self, job: list[str]) -> bool:
        from xbench.config.cells import resolve_cell
        from xbench.rundir import RunDir, config_hash

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        if cfg.get("plan"):
            return False
        HydraConfig.instance().set_config(cfg)
        run_dir = Path(str(cfg.hydra.sweep.dir)) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
        meta = RunDir(run_dir)
        if not meta.meta_path.exists():
            return False
        try:
            return meta.is_done(config_hash(resolve_cell(cfg)[0]))
        except ValueError:  # an invalid cell: let the job run and report the error
            return False
        finally:
            HydraConfig.instance().set_config(self.config)

    def sweep(self, arguments: list[str]) -> Any:
        returns = super().sweep(arguments)
        assert self.config is not None
        if not self.config.get("plan"):
            # What each job returned (run_cell's status dict), for xbench.sweep's exit status:
            # a job refused by a run-directory lock writes no meta.json to find it by.
            from xbench.io import write_json

            values = [r.return_value for batch in returns for r in batch]
            write_json(
                Path(str(self.config.hydra.sweep.dir)) / "job_returns.json",
                [v for v in values if isinstance(v, dict)],
            )
        return returns
