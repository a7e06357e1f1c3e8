"""``python -m xbench.train``: train and evaluate one cell (:mod:`xbench.engine.session`)."""

import sys

from xbench.engine.session import main

if __name__ == "__main__":
    sys.exit(main())
