"""lm-evaluation-harness task definitions shipped with xbench (YAML + small loaders).

Each subfolder is one suite's ``TaskManager(include_path=...)`` root, so indexing a suite reads only
its own YAML files (milliseconds) instead of lm-eval's ~14k built-in tasks (seconds).
"""
