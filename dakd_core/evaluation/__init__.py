"""Evaluation: metrics (metrics.py), model evaluation (evaluate.py), scoring of prediction PNGs
(score.py), Markdown reports (report.py) and plots (plots.py).

Import the submodules directly; this package imports nothing heavy so that the training loops can
use `dakd_core.evaluation.metrics` cheaply.
"""
