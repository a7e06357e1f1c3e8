"""One training run, from a resolved cell config to a trained student in a run directory.

- ``session``: ``train(cfg, run_dir)`` and the ``python -m xbench.train`` entry (Hydra, SIGTERM,
  resume); ``loop``: builds the session (models, teachers, data, optimizer) and runs the steps;
- ``objective``: CE + every teacher's KD for one micro-batch (the losses, mixed);
- ``teachers``: a teacher's model, tokenizer pair data (W, pairs) and placement;
- ``data`` (in-memory corpora, packing, cross-tokenizer collation), ``corpus`` (streamed
  pre-training corpora); ``models``: the one model loader (training and evaluation);
- ``checkpoint``, ``distributed`` (DDP/FSDP on gloo or NCCL), ``metrics``, ``memory`` (plan-time
  per-GPU estimate).

The engine imports ``tokenpair``, ``losses``, ``config`` and the foundation; sources such as the
miniature world reach it through :mod:`xbench.sources` only.
"""
