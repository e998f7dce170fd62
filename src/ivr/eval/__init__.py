"""Evaluation: benchmark loaders, a resumable runner, COCO metrics, tables, plots and statistics.

    from ivr.eval import evaluate, load_benchmark, coco_metrics, compare, paired_test

Names are imported on first use, so ``ivr --help`` (which imports ``ivr.eval.cli``) stays instant.
See docs/eval.md (and docs/statistics.md for the tests).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "ivr.eval.runner",
    "evaluate_benchmark": "ivr.eval.runner",
    "evaluate_samples": "ivr.eval.runner",
    "predict": "ivr.eval.runner",
    "summarize": "ivr.eval.summary",
    "load_benchmark": "ivr.eval.loaders",
    "Benchmark": "ivr.eval.loaders",
    "BenchmarkFormatError": "ivr.eval.loaders",
    "EvalItem": "ivr.eval.loaders",
    "ImageDecodeError": "ivr.eval.loaders",
    "SkippedRow": "ivr.eval.loaders",
    "BENCHMARKS": "ivr.eval.loaders",
    "coco_metrics": "ivr.eval.coco",
    "compare": "ivr.eval.tables",
    "compare_markdown": "ivr.eval.tables",
    "load_results": "ivr.eval.tables",
    "plot_results": "ivr.eval.tables",
    "table1_markdown": "ivr.eval.tables",
    "to_markdown": "ivr.eval.tables",
    "accuracy_ci": "ivr.eval.stats",
    "paired_test": "ivr.eval.stats",
    "pooled_paired": "ivr.eval.stats",
    "seed_summary": "ivr.eval.stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ivr.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
