"""``python -m xbench.sweep``: every cell of an experiment through Hydra (:mod:`.launch`)."""

import sys

from xbench.sweep.launch import main

sys.exit(main())
