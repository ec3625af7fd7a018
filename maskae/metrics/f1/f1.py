"""Binary F1 of the positive class (MRPC's second GLUE metric) as an `evaluate` module shipped with
maskae, loaded by path so that no Hub access is needed."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1 score (harmonic mean of precision and recall) of the positive class, in [0, 1]."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): gold labels.
    pos_label (int): the positive class (default 1, e.g. MRPC's "is a paraphrase").
Returns:
    f1 (float): the F1 score, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, pos_label=1):
        return {"f1": float(f1_score(references, predictions, pos_label=pos_label, zero_division=0.0))}
