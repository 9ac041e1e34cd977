"""Conveyor's benchmarks: ``python -m bench`` runs them all (``make bench``); ``python -m bench NAME`` runs one.

A benchmark is a module in this package listed in :data:`bench.__main__.BENCHMARKS`, with a ``NAME``, a
``DESCRIPTION`` and ``run(options) -> Report``: it starts what it measures (real processes, loopback only),
measures its subject and a baseline in the same run, and returns rows. The runner adds the machine's
description and the ratios to the baseline, and writes Markdown and JSON under ``bench/results/``.
"""
