"""Reports: run directories (or the published table) -> tidy table -> leaderboards and figures.

``load`` (run directories and results/reference into tidy frames), ``aggregate`` (means, 95%
CIs, deltas vs GOLD, the paper's claims and paired orderings), ``render`` (markdown, LaTeX,
CSV), ``plots`` (matplotlib figures), ``common`` (column names and orders), ``build``
(``build_report`` and ``python -m xbench.report PATH``).
"""
