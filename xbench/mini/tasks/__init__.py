"""Offline miniature tasks over the synthetic arithmetic corpus (:mod:`xbench.mini.corpus`)."""
