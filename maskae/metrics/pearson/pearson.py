"""Pearson correlation (STS-B's first GLUE metric) as an `evaluate` module shipped with maskae, loaded by
path so that no Hub access is needed."""

import datasets
import evaluate
from scipy.stats import pearsonr

_DESCRIPTION = "Pearson (linear) correlation between predicted and gold scores, in [-1, 1]."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted scores.
    references (list of float): gold scores.
Returns:
    pearsonr (float): the correlation, in [-1, 1] (not multiplied by 100).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Pearson(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"pearsonr": float(pearsonr(predictions, references).statistic)}
