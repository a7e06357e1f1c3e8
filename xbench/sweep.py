"""``python -m xbench.sweep +experiment=NAME``: every cell of a study as one Hydra multirun.

Each job runs one cell (W -> train -> evaluate -> run directory) through the configured launcher
(``hydra/launcher=local``: submitit on this machine; ``hydra/launcher=slurm``: submitit on SLURM).
When every job has ended, the leaderboard and figures are rebuilt from the run directories alone.

``plan=true`` launches nothing: it prints one ``CELL`` line per job with its resources and the
exact command that runs it alone.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from xbench.cells import resolve_cell
from xbench.rundir import RunDir, config_hash

log = logging.getLogger("xbench.sweep")
# Filled by SweepCallback.on_multirun_end (it runs in the launching process).
_LAST: dict[str, Any] = {}


def _prepare_eval(cfg: DictConfig) -> DictConfig:
    """Point the miniature eval suite at the world's held-out split."""
    ev = cfg.eval
    if cfg.data.source == "mini" and "metadata" in ev and "mini_data_dir" in ev.metadata:
        from xbench.mini import world

        ev.metadata.mini_data_dir = str(world.data_dir())
    return ev


def run_cell(cfg: DictConfig) -> dict[str, Any]:
    """Run one cell into its run directory; returns ``{"status", "run_dir", ...}``.

    A run directory already ``done`` for the same config hash is skipped. Failures are written
    to meta.json (status ``failed`` with the traceback) and returned, not raised, so that one bad
    cell does not stop the sweep from finishing and reporting.
    """
    resolved, cell = resolve_cell(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("plan"):
        _print_plan(cfg, resolved, cell)
        return {"status": "planned", "run_dir": str(run_dir)}
    from xbench import distributed

    rd = RunDir(run_dir)
    h = config_hash(resolved)
    if rd.is_done(h):
        log.info("cell %s is done (config %s): skipped", run_dir.name, h)
        return {"status": "skipped", "run_dir": str(run_dir)}
    # A multi-task cell runs this function once per rank; only rank 0 writes the run directory.
    main_rank = distributed.env_rank() == 0
    if main_rank:
        rd.start(resolved, cell, str(cfg.experiment))
    t0 = time.time()
    try:
        from xbench.evaluate import evaluate
        from xbench.models import load_model, load_tokenizer
        from xbench.train import configure_world, train

        configure_world(resolved)
        ev = _prepare_eval(resolved)
        if resolved.train.enabled:
            summary = train(resolved, run_dir)
            model, tok, is_main = summary["student"], summary["tokenizer"], summary["dist"].is_main
            if is_main and summary["world_size"] > 1 and resolved.train.parallel == "fsdp":
                # The trained student is sharded across ranks; rank 0 evaluates an unsharded copy
                # built from the final checkpoint (which holds the full, gathered state).
                from xbench.checkpoint import load_latest

                model = load_model(resolved.student, tok, field="student", seed=int(resolved.seed))
                model.load_state_dict(load_latest(rd.ckpt_dir)["model"])
        else:
            tok = load_tokenizer(resolved.student.tokenizer)
            model = load_model(resolved.student, tok, field="student", seed=int(resolved.seed))
            is_main, summary = (
                main_rank,
                {"steps": 0, "final_loss": None, "resumed_from": 0, "world_size": 1},
            )
        t1 = time.time()
        if is_main:
            results = evaluate(model, tok, ev, out_dir=run_dir, model_name=cell["student"])
            rd.update(
                status="done",
                timings={
                    "train_s": t1 - t0,
                    "eval_s": time.time() - t1,
                    "total_s": time.time() - t0,
                },
                train={
                    k: summary[k] for k in ("steps", "final_loss", "resumed_from", "world_size")
                },
                scores={k: v["value"] for k, v in results["tasks"].items()},
            )
        distributed.barrier()
        if resolved.train.get("delete_checkpoints_when_done"):
            for p in rd.ckpt_dir.glob("*.pt"):
                p.unlink()
        return {"status": "done", "run_dir": str(run_dir)}
    except Exception as exc:  # recorded, reported, and the sweep goes on
        if not main_rank:
            raise
        rd.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            timings={"failed_after_s": time.time() - t0},
        )
        log.error("cell %s failed: %s", run_dir.name, exc)
        return {"status": "failed", "run_dir": str(run_dir), "error": str(exc)}


def _print_plan(cfg: DictConfig, resolved: DictConfig, cell: dict[str, Any]) -> None:
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("plan=")]
    cmd = "python -m xbench.sweep " + " ".join(shlex.quote(o) for o in overrides)
    res = OmegaConf.to_container(resolved.resources, resolve=True)
    print(
        f"CELL {cfg.experiment} cell={cell['name']} seed={cell['seed']} "
        f"student={cell['student']} teachers={cell['teachers']} method={cell['method']} "
        f"alpha={cell['alpha']} rank={cell['rank']} semantics={cell.get('semantics')} "
        f"resources={json.dumps(res, sort_keys=True)} "
        f"cmd: {cmd}",
        flush=True,
    )


class SweepCallback(Callback):
    """Builds the miniature world before launching and the report after every job has ended."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan"):
            return
        if config.data.source == "mini":
            from xbench.mini import world
            from xbench.train import configure_world

            configure_world(config)
            specs = [config.student, *config.zoo.values()]
            roles = [
                str(m.model).split(":", 1)[1] for m in specs if str(m.model).startswith("mini:")
            ]
            log.info("miniature world: %s", world.build_world(roles))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan"):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        from xbench.report import build_report

        written = build_report(sweep_dir, sweep_dir / "report")
        statuses = _statuses(sweep_dir)
        summary = {
            "sweep_dir": str(sweep_dir),
            "statuses": statuses,
            "report": {k: str(v) for k, v in written.items()},
        }
        (sweep_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2))
        _LAST.update(summary)
        log.info("report: %s", sweep_dir / "report")
        for status, runs in statuses.items():
            if status != "done":
                log.warning("%d cell(s) %s: %s", len(runs), status, ", ".join(runs))


def _statuses(sweep_dir: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for meta in sorted(sweep_dir.rglob("meta.json")):
        status = json.loads(meta.read_text()).get("status", "unknown")
        out.setdefault(status, []).append(meta.parent.name)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    return run_cell(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point: adds the plan-mode overrides, runs the multirun, returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("plan=true", "plan=True", "+plan=true") for a in argv):
        # Plan mode: run the jobs in-process with the basic launcher (they only print) and
        # keep Hydra's job directories out of the results tree.
        tmp = tempfile.mkdtemp(prefix="xbench-plan-")
        argv += [
            "hydra/launcher=basic",
            f"hydra.sweep.dir={tmp}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
    sys.argv = [sys.argv[0], *argv]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hydra_main()
    if "plan=true" in argv:
        return 0
    # A failed cell is reported (meta.json and the leaderboard) and makes the sweep exit 1.
    failed = _LAST.get("statuses", {}).get("failed", [])
    for name in failed:
        print(f"FAILED {name} (see its meta.json in {_LAST['sweep_dir']})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
