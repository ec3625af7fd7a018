"""Figures that make embeddings visible: a per-layer quality curve (which layer embeds best?) and a
2-D map of sentences coloured by label (does the code separate the classes?)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from ..errors import ConfigError, DataError  # noqa: E402

METHODS = ("pca", "tsne")


def plot_layer_curve(
    layers: Sequence[int], series: Mapping[str, Sequence[float]], ylabel: str, output: str | Path, title: str = ""
) -> Path:
    """One line per series (e.g. one per label budget) of a figure against the layer index."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in series.items():
        axes.plot(layers, values, marker="o", label=name)
    axes.set_xlabel("layer (0 = embeddings)")
    axes.set_ylabel(ylabel)
    axes.set_xticks(list(layers))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend()
    return _save(figure, output)


def project_2d(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """[n, d] -> [n, 2] with PCA (linear, global structure) or t-SNE (non-linear, local neighbourhoods)."""
    if method not in METHODS:
        raise ConfigError(f"unknown projection method {method!r}; use one of {', '.join(METHODS)}.")
    if len(embeddings) < 3:
        raise DataError(f"a 2-D map needs at least 3 sentences, got {len(embeddings)}; pass more rows.")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    perplexity = min(30.0, (len(embeddings) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)


def plot_embedding_map(
    embeddings: np.ndarray, labels: Sequence, output: str | Path, method: str = "pca", title: str = "", seed: int = 0
) -> Path:
    """Scatter of the 2-D projection of `embeddings`, one colour per label."""
    points = project_2d(embeddings, method, seed)
    labels = np.asarray(labels)
    figure, axes = plt.subplots(figsize=(6, 6))
    for label in np.unique(labels):
        chosen = labels == label
        axes.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7, label=str(label))
    axes.set_title(title or f"{method.upper()} of {len(points)} embeddings")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(title="label", markerscale=2)
    return _save(figure, output)


def _save(figure: plt.Figure, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
