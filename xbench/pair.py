"""``python -m xbench.pair student=llama3 teacher=[qwen3,phi4like]``: the tokenizer-pair audit.

For each teacher (one name or a list), builds (or loads from the cache) the projection W of the
pair, audits the pair on a GSM8K sample and writes ``pair_audit.json`` and ``pair_audit.md`` to
``out_dir/<student>__<teacher>/``; then writes the paper's Table 8 with a column per teacher to
``out_dir/<student>__table8.{md,json}`` and prints it (see ``conf/pair.yaml``).

The entry point only: the audit itself is :func:`xbench.tokenpair.pair_audit.run_pair`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xbench import CONF_DIR
from xbench.tokenpair.pair_audit import run_pair

__all__ = ["main"]

_CONF = CONF_DIR / "pair.yaml"


def _help() -> str:
    from xbench.assets import OFFLINE_TOKENIZERS

    return (
        "usage: python -m xbench.pair student=TOKENIZER teacher=TOKENIZER|[T1,T2,...]\n"
        "       [key=value ...]\n"
        "  Audits a tokenizer pair (W, alignment and numeral statistics on a GSM8K sample) and\n"
        "  writes out_dir/<student>__<teacher>/pair_audit.{json,md} with a loss recommendation\n"
        "  (P-KL or H-KL), and one Table-8 view with a column per teacher\n"
        "  (out_dir/<student>__table8.md).\n"
        f"  TOKENIZER: an offline asset ({', '.join(OFFLINE_TOKENIZERS)}), a directory or a Hub"
        " id.\n"
        "  keys (conf/pair.yaml): out_dir, sample_size, seed, rank, reverse_pass, threshold,\n"
        "  align_method (offset | dp).\n"
        "XBENCH_DEBUG=1 prints the full traceback of an error."
    )


def _cli(argv: list[str]) -> int:
    import hydra
    from hydra.core.config_store import ConfigStore

    from xbench.config import validate_pair
    from xbench.config.cli import compose, guard, strip_flags

    # conf/ holds model groups named student/ and teacher/; registering this file in the
    # ConfigStore (search path without conf/) keeps `student=llama3` a plain value override.
    ConfigStore.instance().store(name="xbench_pair", node=OmegaConf.load(_CONF))
    validate_pair(compose("xbench_pair", strip_flags(argv), config_dir=None))
    # Nothing on disk but the report: no empty out_dir when the audit fails, no .hydra/.
    sys.argv = [sys.argv[0], *argv, "hydra/job_logging=stdout"]

    @hydra.main(version_base="1.3", config_path=None, config_name="xbench_pair")
    def _app(cfg: DictConfig) -> None:
        with guard("xbench.pair"):
            result = run_pair(OmegaConf.to_container(cfg, resolve=True))
        print(result["table8"])
        print(f"wrote {Path(cfg.out_dir)}/{cfg.student}__*/pair_audit.md and the table above")

    _app()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``python -m xbench.pair key=value ...``); returns the exit code."""
    from xbench.config.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("xbench.pair", argv, _cli, _help)


if __name__ == "__main__":
    sys.exit(main())
