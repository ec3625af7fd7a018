"""The figures maskae computes from predictions: the `evaluate` modules it ships (one folder each,
loaded by path, so no Hub access is needed) and masked-LM scoring of a model on noised batches
(`masked_lm`), which both the training loop and `maskae evaluate --task mlm` report.

May import: the model closure only."""

from __future__ import annotations

import functools
from pathlib import Path

import evaluate

MODULES = Path(__file__).parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """A shipped metric, loaded by path and kept in memory (no cache files shared between processes)."""
    return evaluate.load(str(MODULES / name / f"{name}.py"), keep_in_memory=True)


@functools.cache
def shared_metric(name: str) -> evaluate.EvaluationModule:
    """One loaded instance per process, for figures computed in one `compute(predictions=..., references=...)`
    call, which keeps no state between calls (incremental `add_batch` users load their own)."""
    return load_metric(name)
