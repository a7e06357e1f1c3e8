"""The miniature world: the X-Token study in miniature on a CPU, as an xbench plug-in.

``corpus`` (closed-book facts in GSM8K format), ``tokenizers`` (look-alike vocabularies: the
student's, a digit-splitting one like Qwen3, a digit-grouping one like Phi-4-mini), ``world``
(tiny pre-trained models, built once and cached), ``tasks/`` (its lm-eval tasks) and ``plugin``
(the one door: registers ``mini:KIND`` / ``mini:ROLE`` / ``data=mini`` with
:mod:`xbench.sources`). The plug-in imports the core; nothing in the core imports it.
"""
