"""The pieces of ``xbench.report``: ``common`` (names shared by all), ``load`` (run directories ->
tidy / curves tables), ``aggregate`` (leaderboard and the statistics on it) and ``render``
(markdown / LaTeX / text). ``xbench.report`` is the entry point and re-exports their public names.
"""
