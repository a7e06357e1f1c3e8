"""``python -m xbench.evaluate``: lm-evaluation-harness on one model (:mod:`.harness`)."""

import sys

from xbench.evaluate.harness import main

sys.exit(main())
