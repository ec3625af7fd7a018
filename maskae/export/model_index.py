"""Measured metrics as the Hub's model-index (`EvalResult`s), for every model card maskae writes; the
model-index only ever holds metrics that were passed in, i.e. measured."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import EvalResult

from ..errors import ConfigError

# Metric names that maskae's evaluation reports -> (Hub task type, Hub metric type, readable name).
KNOWN_METRICS = {
    "masked_accuracy": ("fill-mask", "accuracy", "Masked-token accuracy"),
    "pseudo_perplexity": ("fill-mask", "perplexity", "Pseudo-perplexity"),
    "perplexity": ("fill-mask", "perplexity", "Masked-token perplexity"),
    "replaced_accuracy": ("token-classification", "accuracy", "Replaced-token detection accuracy"),
    "sts_spearman": ("sentence-similarity", "spearmanr", "STS Spearman correlation"),
    "probe_accuracy": ("text-classification", "accuracy", "Linear-probe accuracy"),
    "teacher_cosine": ("feature-extraction", "cosine", "Cosine to the teacher's sentence embedding (held-out text)"),
    "speedup_vs_teacher": ("feature-extraction", "speedup", "Embedding speed, x the teacher's (same CPU, same text)"),
    "original_cosine": ("feature-extraction", "cosine", "Cosine to the original model's sentence embedding (held-out text)"),
    "isotropy": ("feature-extraction", "isotropy", "Isotropy of the sentence embeddings (held-out text; 1 = every direction used)"),
}


def eval_results(metrics: Iterable[Mapping[str, Any] | EvalResult] | None) -> list[EvalResult]:
    """Measured metrics -> the Hub's `EvalResult`s; maskae's own metric names get their task and metric type."""
    results = []
    for record in metrics or ():
        if isinstance(record, EvalResult):
            results.append(record)
            continue
        if not isinstance(record, Mapping) or not all(record.get(key) is not None for key in ("metric", "value", "dataset")):
            raise ConfigError(
                f"metric record {record!r} needs 'metric', 'value' and 'dataset', "
                "e.g. {'metric': 'masked_accuracy', 'value': 0.61, 'dataset': 'wikitext'}."
            )
        name = str(record["metric"])
        task_type, metric_type, readable = KNOWN_METRICS.get(name, (record.get("task"), name, name))
        task_type = record.get("task", task_type)
        if task_type is None:
            raise ConfigError(
                f"metric {name!r} is not one of maskae's ({', '.join(KNOWN_METRICS)}); add its 'task', e.g. 'fill-mask'."
            )
        try:
            value = float(record["value"])
        except (TypeError, ValueError):
            raise ConfigError(f"metric {name!r} has value {record['value']!r}; it must be a number.") from None
        if record.get("layer") is not None:
            readable = f"{readable} (layer {record['layer']})"
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=str(record["dataset"]),
                dataset_name=str(record.get("dataset_name") or record["dataset"]),
                dataset_config=record.get("config"),
                dataset_split=record.get("split"),
                metric_type=metric_type,
                metric_name=readable,
                metric_value=value,
            )
        )
    return results


def metric_records(
    results: Mapping[str, Any], dataset: str, split: str | None = None, config: str | None = None,
    dataset_name: str | None = None,
) -> list[dict[str, Any]]:
    """Records for `eval_results` from a flat {metric: value} dict such as the trainer's eval_results.json,
    measured on `dataset`; keys that are not maskae metrics (step, throughput, ...) are left out."""
    return [
        {"metric": name, "value": value, "dataset": dataset, "split": split, "config": config,
         "dataset_name": dataset_name or dataset}
        for name, value in results.items()
        if name in KNOWN_METRICS and value is not None
    ]
