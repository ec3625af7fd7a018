"""Linear probes with few labels on frozen embeddings, and sweeps of a figure over every layer.

The figure on arrays (`probe_accuracy`) is separate from the model-facing functions so that it can be
checked against an independent computation on fixed arrays."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..embeddings.embedder import Embedder
from ..embeddings.whitening import Whitening
from ..errors import ConfigError, DataError
from ..metrics import shared_metric
from .baselines import lsa_embeddings, pca_embeddings
from .frozen import chosen_whitening, code_width, full_width, load_embedder
from .results import LayersResult, ProbeResult
from .sts import evaluate_sts
from .tasks import DEFAULT_BUDGETS, DEFAULT_SEEDS, budget_name, read_labelled

logger = logging.getLogger(__name__)


def probe_accuracy(
    train_x: np.ndarray,
    train_labels: Sequence,
    eval_x: np.ndarray,
    eval_labels: Sequence,
    budgets: Sequence[int | None] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> list[dict]:
    """Accuracy of a logistic-regression probe on standardised frozen features, for each label budget.

    A budget of n labels is a stratified sample of the training pool, drawn once per seed; the
    figure is the mean (and standard deviation) over seeds. `None` means the whole pool, which
    involves no sampling, so it is fitted once. Budgets that are not smaller than the pool are the
    same as the whole pool and are dropped.
    """
    classes, train_y = np.unique(np.asarray(train_labels), return_inverse=True)
    lookup = {label: i for i, label in enumerate(classes)}
    unseen = sorted({str(label) for label in eval_labels if label not in lookup})
    if unseen:
        raise DataError(f"the evaluation labels {', '.join(unseen[:5])} never occur in the training data; use matching label sets.")
    eval_y = np.array([lookup[label] for label in eval_labels])
    if not seeds:
        raise ConfigError("the probe needs at least one seed; pass e.g. seeds=(0, 1, 2, 3, 4).")
    if len(classes) < 2:
        raise DataError("the training data has a single label; a probe needs at least two classes.")
    accuracy = shared_metric("probe_accuracy")
    pool = len(train_y)
    results = []
    for budget in budgets:
        if budget is not None and budget >= pool:
            logger.warning("label budget %d is not smaller than the training pool (%d); it equals 'all'", budget, pool)
            continue
        if budget is not None and budget < len(classes):
            raise ConfigError(f"label budget {budget} is smaller than the number of classes ({len(classes)}); raise it.")
        scores = []
        for seed in seeds if budget is not None else seeds[:1]:
            if budget is None:
                x, y = train_x, train_y
            else:
                x, _, y, _ = train_test_split(train_x, train_y, train_size=budget, stratify=train_y, random_state=seed)
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
            probe.fit(x, y)
            scores.append(accuracy.compute(predictions=probe.predict(eval_x), references=eval_y)["accuracy"])
        results.append(
            {
                "budget": budget_name(budget),
                "labels": pool if budget is None else budget,
                "seeds": len(scores),
                "accuracy_x100": 100 * float(np.mean(scores)),
                "std_x100": 100 * float(np.std(scores)),
            }
        )
    return results


def probe_pool(texts: list[str], labels: list[str], max_train: int | None) -> tuple[list[str], list[str]]:
    """A stratified random subset (seed 0) of at most `max_train` training examples: the "all" pool."""
    if max_train is None or max_train >= len(texts):
        return texts, labels
    texts, _, labels, _ = train_test_split(texts, labels, train_size=max_train, stratify=labels, random_state=0)
    return list(texts), list(labels)


def evaluate_probe(
    model: str | Path | Embedder,
    train: str | Path,
    eval: str | Path,
    *,
    layer: int | None = None,
    pooling: str = "mean",
    budgets: Sequence[int | None] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    max_train: int | None = None,
    baseline: bool = False,
    dim: int | None = None,
    limit: int | None = None,
    whiten: bool | Whitening = True,
    **embed_kwargs,
) -> dict:
    """Linear-probe accuracy ×100 on the `eval` tsv for each label budget drawn from the `train` tsv.

    `max_train` caps the training pool ("all"); `limit` caps the evaluation rows. With `baseline`,
    also LSA and PCA at width `dim` (default: the code width), fitted on the pool's texts. A
    whitening (`whiten`, as in `evaluate_sts`) adds the probe on whitened embeddings under "whitened".
    """
    train_texts, train_labels = probe_pool(*read_labelled(train), max_train)
    eval_texts, eval_labels = read_labelled(eval, limit)
    embedder = load_embedder(model)
    train_x = embedder.embed(train_texts, layer=layer, pooling=pooling, whiten=False, **embed_kwargs)
    eval_x = embedder.embed(eval_texts, layer=layer, pooling=pooling, whiten=False, **embed_kwargs)
    result = ProbeResult({
        "task": "probe",
        "train_pool": len(train_texts),
        "eval_examples": len(eval_texts),
        "layer": layer,
        "pooling": pooling,
        "dim": int(train_x.shape[1]),
        "budgets": probe_accuracy(train_x, train_labels, eval_x, eval_labels, budgets, seeds),
    })
    whitening = chosen_whitening(embedder, whiten, layer, pooling)
    if whitening is not None:
        white_train, white_eval = whitening.apply(train_x), whitening.apply(eval_x)
        result["whitened"] = {"dim": whitening.dim, "fitted_on": whitening.num_texts,
                              "budgets": probe_accuracy(white_train, train_labels, white_eval, eval_labels, budgets, seeds)}
    if baseline:
        dim = dim or code_width(embedder)
        lsa_train, lsa_eval = lsa_embeddings(train_texts, [train_texts, eval_texts], dim)
        full_train = full_width(embedder, train_texts, train_x, layer, pooling, embed_kwargs)
        full_eval = full_width(embedder, eval_texts, eval_x, layer, pooling, embed_kwargs)
        pca_train, pca_eval = pca_embeddings(full_train, [full_train, full_eval], dim)
        result["baselines"] = {
            "lsa": {"dim": dim, "budgets": probe_accuracy(lsa_train, train_labels, lsa_eval, eval_labels, budgets, seeds)},
            "pca": {
                "dim": dim,
                "from_dim": int(full_train.shape[1]),
                "budgets": probe_accuracy(pca_train, train_labels, pca_eval, eval_labels, budgets, seeds),
            },
        }
    return result


def evaluate_layers(model: str | Path | Embedder, task: str, **kwargs) -> dict:
    """The `sts` or `probe` figure at every layer (0 = embeddings) of the encoder, and the best one.
    `kwargs` go to `evaluate_sts` (data=...) or `evaluate_probe` (train=..., eval=...)."""
    runners = {"sts": evaluate_sts, "probe": evaluate_probe}
    if task not in runners:
        raise ConfigError(f"cannot sweep layers for task {task!r}; use one of {', '.join(runners)}.")
    embedder = load_embedder(model)
    kwargs.pop("layer", None)
    kwargs["whiten"] = False  # a whitening is fitted on one layer; the sweep compares raw layers
    rows = [runners[task](embedder, layer=k, **kwargs) for k in range(embedder.num_layers + 1)]

    def headline(row: dict) -> float:
        return row["spearman_x100"] if task == "sts" else row["budgets"][-1]["accuracy_x100"]

    best = max(rows, key=headline)
    return LayersResult({"task": "layers", "of": task, "layers": rows, "best_layer": best["layer"], "best": headline(best)})
