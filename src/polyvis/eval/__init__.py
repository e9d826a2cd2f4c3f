"""Evaluation: metrics per task family, and reports that compare runs.

The package exports the metrics API (listed once, in `polyvis.eval.metrics.__all__`) and the
report functions `compare`, `load_results` and `write_report`.
"""

from polyvis.eval import metrics as _metrics
from polyvis.eval.metrics import *  # noqa: F403
from polyvis.eval.report import compare, load_results, write_report

__all__ = [*_metrics.__all__, "compare", "load_results", "write_report"]
