"""xbench: benchmark harness for cross-tokenizer knowledge distillation.

The house, bottom to top (a module imports only from its own layer or the ones above it in
this list; ``tests/test_layout.py`` checks it):

- foundation: ``errors``, ``io`` (atomic writes, configs as dicts), ``vocab`` (method names),
  ``rundir`` (the run-directory contract), ``assets`` (tokenizers, data and a model from package
  registries), ``sources`` (one registry resolving plug-in, asset, directory and Hub sources);
- ``tokenpair``: a tokenizer pair: chunk alignment, the projection W, the audit;
- ``losses``: pure tensor functions, one per method, sum-reduced;
- ``config``: typed schema, ``validate(cfg)`` (one sentence per bad field), a cell's teachers;
- ``engine``: one training run: session, loop, objective, data, teachers, models, checkpoints,
  distributed, metrics;
- ``evaluate``: lm-evaluation-harness on a run directory, checkpoint or Hub id;
- ``report``: run directories -> tidy table -> leaderboards and figures;
- ``sweep``: Hydra + submitit cells of an experiment, each a run directory, ending in a report;
- ``mini``: the miniature world, a plug-in registered through ``sources`` (entry point
  ``xbench.sources``); no other package imports it.

xbench runs from a source checkout (``pip install -e .``): the Hydra configs (``conf/``) and the
published table (``results/reference``) live beside the package, at :data:`REPO_ROOT`.
"""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
REFERENCE_DIR = REPO_ROOT / "results" / "reference"
