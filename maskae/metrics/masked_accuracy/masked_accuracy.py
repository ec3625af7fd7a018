"""Masked-token accuracy, and loss / perplexity over the masked positions, as an `evaluate` module
shipped with maskae and loaded by path (the Hub's "accuracy" module cannot be fetched offline).

Fed with one-token-at-a-time masking, the same figures are the pseudo-accuracy and the
pseudo-perplexity of Salazar et al. (2020), "Masked Language Model Scoring"."""

import math

import datasets
import evaluate

_DESCRIPTION = "Accuracy of predictions at masked positions; with per-target losses, their mean and its exponential."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted token ids, one per target position.
    references (list of int): original token ids; positions holding -100 are ignored.
    losses (list of float, optional): cross-entropy (natural log) of each target.
Returns:
    accuracy (float): share of targets predicted exactly, in [0, 1].
    num_targets (int): number of targets scored.
    loss (float, with losses): mean cross-entropy over the targets.
    perplexity (float, with losses): exp(loss).
"""

IGNORE_INDEX = -100


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MaskedAccuracy(evaluate.Metric):
    def _info(self):
        ids = {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({**ids, "losses": datasets.Value("float64")}),
                datasets.Features(ids),
            ],
        )

    def _compute(self, predictions, references, losses=None):
        kept = [i for i, reference in enumerate(references) if reference != IGNORE_INDEX]
        if not kept:
            raise ValueError("no masked positions to score: every reference is -100.")
        correct = sum(predictions[i] == references[i] for i in kept)
        result = {"accuracy": correct / len(kept), "num_targets": len(kept)}
        if losses is not None:
            loss = math.fsum(losses[i] for i in kept) / len(kept)
            result.update(loss=loss, perplexity=math.exp(loss) if loss < 709 else math.inf)
        return result
