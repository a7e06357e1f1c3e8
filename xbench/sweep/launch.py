"""``python -m xbench.sweep +experiment=NAME``: every cell of a study as one Hydra multirun.

Each job runs one cell (W -> train -> evaluate -> run directory) through the configured launcher
(``hydra/launcher=local``: submitit on this machine; ``hydra/launcher=slurm``: submitit on SLURM).
When every job has ended, the leaderboard and figures are rebuilt from the run directories alone.

``plan=true`` launches nothing: it prints one ``CELL`` line per job with its resources and the
exact command that runs it alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from xbench import CONF_DIR, sources
from xbench.config.cells import resolve_cell
from xbench.io import plain, write_json
from xbench.rundir import Locked, RunDir, config_hash, lock

log = logging.getLogger("xbench.sweep")
PROG = "xbench.sweep"
CONF = CONF_DIR


def _prepare_eval(cfg: DictConfig) -> DictConfig:
    """The cell's eval suite, its plug-in data pinned to what the cell trained on."""
    ev = cfg.eval
    # An experiment drops a task of its suite by setting it to null (Hydra merges mappings).
    ev.tasks = {k: v for k, v in ev.tasks.items() if v is not None}
    if "metadata" in ev:
        ev.metadata = sources.eval_metadata(plain(ev.metadata), cfg)
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
    from xbench.engine import distributed

    rd = RunDir(run_dir)
    h = config_hash(resolved)
    if rd.is_done(h):
        log.info("cell %s is done (config %s): skipped", run_dir.name, h)
        return {"status": "skipped", "run_dir": str(run_dir)}
    # A multi-task cell runs this function once per rank; only rank 0 writes the run directory
    # and holds its lock (a second writer of the same directory is refused).
    main_rank = distributed.env_rank() == 0
    _die_with_local_sweep()
    with contextlib.ExitStack() as stack:
        if main_rank:
            try:
                stack.enter_context(rd.lock())
            except Locked as exc:
                log.error("cell %s not run: %s", run_dir.name, exc)
                return {
                    "status": "locked",
                    "run_dir": str(run_dir),
                    "error": str(exc),
                    "cell": cell,
                }
        return _run_locked(cfg, resolved, cell, rd, main_rank)


def _run_locked(
    cfg: DictConfig, resolved: DictConfig, cell: dict[str, Any], rd: RunDir, main_rank: bool
) -> dict[str, Any]:
    run_dir = rd.path
    if main_rank:
        rd.start(resolved, cell, str(cfg.experiment))
    t0 = time.time()
    try:
        from xbench.engine.models import load_model, load_tokenizer
        from xbench.engine.session import train
        from xbench.evaluate.harness import evaluate

        sources.configure(resolved)
        ev = _prepare_eval(resolved)
        if resolved.train.enabled:
            summary = train(resolved, run_dir)
            model, tok, is_main = summary["student"], summary["tokenizer"], summary["dist"].is_main
            if is_main and summary["world_size"] > 1 and resolved.train.parallel == "fsdp":
                # The trained student is sharded across ranks; rank 0 evaluates an unsharded copy
                # built from the final checkpoint (which holds the full, gathered state).
                from xbench.engine.checkpoint import load_latest

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
        # train() has left the process group: no barrier here, and only rank 0 (which may
        # still read the final checkpoint to evaluate) deletes checkpoints.
        if is_main and resolved.train.get("delete_checkpoints_when_done"):
            for p in rd.ckpt_dir.glob("*.pt"):
                p.unlink()
        return {"status": "done", "run_dir": str(run_dir)}
    except (KeyboardInterrupt, SystemExit) as exc:
        # Ctrl-C, or SIGTERM (train() checkpoints at the end of the step, then exits): the cell
        # is resumable; a rerun of the sweep picks it up from its last checkpoint.
        if not main_rank:
            raise
        reason = str(exc) or type(exc).__name__
        rd.update(
            status="interrupted", error=reason, timings={"interrupted_after_s": time.time() - t0}
        )
        log.error("cell %s interrupted: %s", run_dir.name, reason)
        if "SLURM_JOB_ID" in os.environ:
            # Under SLURM the exit must reach submitit: at a time limit or preemption its handler
            # has requeued the job and exits; returning a result here would end the job for good.
            raise
        return {"status": "interrupted", "run_dir": str(run_dir), "error": reason}
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


def _die_with_local_sweep() -> None:
    """A local cell job (submitit_local) stops when the sweep that launched it is gone.

    The job's parent is submitit's controller, whose parent is the sweep. A SIGKILLed sweep (or
    an OOM kill) leaves the controller and this job running; a daemon thread polls the sweep's
    pid and sends this process SIGTERM, which train() turns into a checkpoint and an exit.
    """
    if "SUBMITIT_LOCAL_JOB_ID" not in os.environ:
        return
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        sweep_pid = int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return
    if sweep_pid <= 1:
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(sweep_pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass

    threading.Thread(target=watch, name="xbench-sweep-watch", daemon=True).start()


def _print_plan(cfg: DictConfig, resolved: DictConfig, cell: dict[str, Any]) -> None:
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("plan=")]
    cmd = "python -m xbench.sweep " + " ".join(shlex.quote(o) for o in overrides)
    res = OmegaConf.to_container(resolved.resources, resolve=True)
    # A cell without a teacher computes no KD formula, so no preset applies ("-", as in reports).
    semantics = cell.get("semantics") or "-"
    print(
        f"CELL {cfg.experiment} cell={cell['name']} seed={cell['seed']} "
        f"student={cell['student']} teachers={cell['teachers']} method={cell['method']} "
        f"alpha={cell['alpha']} rank={cell['rank']} semantics={semantics} "
        f"resources={json.dumps(res, sort_keys=True)} "
        f"cmd: {cmd}",
        flush=True,
    )
    from xbench.engine.memory import describe

    print(f"  {describe(resolved)}", flush=True)


class SweepCallback(Callback):
    """Lets plug-ins build what every cell shares before launching (the miniature world), and
    writes the report after every job has ended."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan"):
            return
        specs = [str(m.model) for m in [config.student, *config.zoo.values()]]
        workers = int(os.environ.get("XBENCH_MAX_PARALLEL", 2))
        for scheme, plugin in sources.plugins().items():
            names = [name for p, name in map(sources.split, specs) if p is plugin]
            if plugin.prepare_sweep is not None and (names or config.data.source == scheme):
                log.info("%s: %s", scheme, plugin.prepare_sweep(config, names, workers))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan"):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        from xbench.report.build import build_report

        written = build_report(sweep_dir, sweep_dir / "report")
        statuses = _statuses(sweep_dir)
        summary = {
            "sweep_dir": str(sweep_dir),
            "statuses": statuses,
            "report": {k: str(v) for k, v in written.items()},
        }
        write_json(sweep_dir / "sweep_summary.json", summary)
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


# An absolute path: `python -m xbench.sweep` runs main() of the imported module (see the end of
# this file), for which Hydra would resolve a relative path against the package, not the file.
@hydra.main(version_base="1.3", config_path=str(CONF), config_name="sweep")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    return run_cell(cfg)


def preflight(argv: list[str]) -> list[dict[str, Any]]:
    """Compose and validate every job of the sweep; raises ConfigError before anything runs."""
    from xbench.config import validate
    from xbench.config.cli import strip_flags, sweep_configs

    jobs = sweep_configs(strip_flags(argv))
    for cfg in jobs:  # every job's values first (fast), then what this machine must provide
        validate(cfg, machine=False)
    for cfg in jobs:
        validate(cfg)
    return jobs


def _help() -> str:
    from xbench.config.cli import catalogue

    return (
        "usage: python -m xbench.sweep +experiment=NAME [cell=A,B] [seed=0,1] [plan=true]"
        " [key=value ...]\n"
        "  Runs every cell of an experiment (one Hydra multirun job per cell: W -> train ->\n"
        "  evaluate -> run directory), then rebuilds the leaderboard. plan=true prints the jobs\n"
        "  and launches nothing. hydra/launcher=local (default) or slurm. Exits 1 with one\n"
        "  `FAILED cell=...` line per cell that did not finish.\n" + catalogue()
    )


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc; empty elsewhere)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in task.read_text().split()]
    return out


def _running(pid: int) -> bool:
    """``pid`` exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def _stop_cells_on_interrupt(grace_s: float = 120.0) -> Any:
    """On SIGINT/SIGTERM to the sweep, stop its local cell jobs before the sweep exits.

    Each submitit controller (a child of this process) forwards SIGTERM to its cell, whose
    train() checkpoints at the end of the step and marks the cell ``interrupted``; the sweep
    waits for them (up to ``grace_s``), then raises KeyboardInterrupt.
    """

    def handler(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the wait
        kids = _children(os.getpid())
        log.warning("%s: stopping %d cell job(s)", signal.Signals(signum).name, len(kids))
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(_running(p) for p in kids):
            time.sleep(0.2)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _not_done(sweep_dir: Path, since: float) -> list[dict[str, Any]]:
    """Cells of this sweep (meta.json written since ``since``) that did not finish."""
    out = []
    for meta_path in sorted(sweep_dir.rglob("meta.json")):
        if meta_path.stat().st_mtime < since:
            continue
        meta = RunDir(meta_path.parent).meta()
        if meta.get("status") != "done":
            out.append({**meta, "run_dir": str(meta_path.parent)})
    return out


def _run(argv: list[str]) -> int:
    jobs = preflight(argv)
    overrides = [*argv]
    if bool(jobs[0]["plan"]):
        # Plan mode: run the jobs in-process with the basic launcher (they only print) and
        # keep Hydra's job directories out of the results tree.
        tmp = tempfile.mkdtemp(prefix="xbench-plan-")
        try:
            sys.argv = [
                sys.argv[0],
                *overrides,
                "hydra/launcher=basic",
                f"hydra.sweep.dir={tmp}",
                "hydra.output_subdir=null",
                "hydra/job_logging=disabled",
                "hydra/hydra_logging=disabled",
            ]
            _hydra_main()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    sweep_dir = Path(jobs[0]["hydra"]["sweep"]["dir"])
    sys.argv = [sys.argv[0], *overrides]
    from xbench.engine import distributed

    main_rank = distributed.env_rank() == 0
    since = time.time() - 1.0  # mtime resolution
    try:
        # Every rank of a multi-task launch (torchrun, srun) runs this sweep; rank 0 holds the
        # sweep lock and reports, the others only take part in their cells' collectives.
        guard = lock(sweep_dir / ".sweep.lock", f"sweep {sweep_dir}") if main_rank else None
        with guard or contextlib.nullcontext(), _stop_cells_on_interrupt():
            _hydra_main()
    except KeyboardInterrupt:
        for m in _not_done(sweep_dir, since):
            print(
                f"INTERRUPTED cell={m.get('cell', {}).get('name')} {m['run_dir']}", file=sys.stderr
            )
        print(f"{PROG}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    # A cell that did not finish is reported (meta.json and the leaderboard) and makes the
    # sweep exit 1, one line per cell.
    if not main_rank:
        return 0
    bad = _not_done(sweep_dir, since)
    returns = sweep_dir / "job_returns.json"
    if returns.exists() and returns.stat().st_mtime >= since:
        bad += [r for r in json.loads(returns.read_text()) if r.get("status") == "locked"]
    for m in bad:
        reason = (m.get("error") or m.get("status") or "").splitlines()
        print(
            f"FAILED cell={m.get('cell', {}).get('name')} status={m.get('status')} "
            f"run_dir={m['run_dir']}: {reason[0] if reason else 'unknown'}",
            file=sys.stderr,
        )
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: validates every job, runs the multirun, returns an exit code."""
    from xbench.config.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_cli(PROG, argv, _run, _help)
