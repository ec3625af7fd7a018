"""Classification accuracy of a probe as an `evaluate` module shipped with maskae, loaded by path so
that no Hub access is needed (the Hub's "accuracy" module cannot be fetched offline)."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Fraction of examples whose predicted label equals the gold label, in [0, 1]."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): labels predicted by the probe.
    references (list of int): gold labels.
Returns:
    accuracy (float): the fraction correct, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ProbeAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions))}
