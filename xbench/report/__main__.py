"""``python -m xbench.report PATH``: leaderboards and figures from run dirs (:mod:`.build`)."""

from xbench.report.build import main

raise SystemExit(main())
