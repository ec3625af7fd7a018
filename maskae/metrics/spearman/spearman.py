"""Spearman rank correlation as an `evaluate` module shipped with maskae, loaded by path so that
no Hub access is needed (the Hub's "spearmanr" module cannot be fetched offline)."""

import datasets
import evaluate
from scipy.stats import spearmanr

_DESCRIPTION = "Spearman rank correlation between predicted similarities and gold scores, in [-1, 1]."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted scores, e.g. cosine similarities of sentence pairs.
    references (list of float): gold scores, e.g. STS-B similarity ratings.
Returns:
    spearmanr (float): the correlation, in [-1, 1] (not multiplied by 100).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Spearman(evaluate.Metric):
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
        return {"spearmanr": float(spearmanr(predictions, references).statistic)}
