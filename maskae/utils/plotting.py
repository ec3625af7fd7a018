"""Figures that make embeddings visible: a per-layer quality curve (which layer embeds best?), a 2-D map
of sentences coloured by label (does the code separate the classes?) and the speed/quality frontier
(which embedding is worth its cost?)."""

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


FRONTIER_STYLES = {"off-the-shelf": ("o", "tab:gray"), "distilled": ("s", "tab:blue"), "anchor": ("^", "tab:red"),
                   "graph": ("D", "tab:green")}


def plot_frontier(points: Sequence[Mapping], output: str | Path, quality: str = "stsb", title: str = "") -> Path:
    """Quality against speed (log scale, as a ratio to the first point's speed) for every point of a
    `benchmarks/bench_frontier.py` JSON file; the points that nothing beats on both axes are joined."""
    if not points:
        raise DataError("the frontier file holds no points; run benchmarks/bench_frontier.py --json FILE first.")
    missing = [p.get("name", "?") for p in points if quality not in p or "speed_ratio" not in p]
    if missing:
        raise DataError(f"points {', '.join(missing[:3])} lack {quality!r} or speed_ratio; pass a file written by "
                        "benchmarks/bench_frontier.py --json.")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for kind, (marker, colour) in FRONTIER_STYLES.items():
        chosen = [p for p in points if p.get("kind") == kind]
        axes.scatter([p["speed_ratio"] for p in chosen], [p[quality] for p in chosen], marker=marker, color=colour,
                     s=40, label=kind, zorder=3)
        for p in chosen:
            axes.annotate(_short_name(p), (p["speed_ratio"], p[quality]), fontsize=7, xytext=(4, 3),
                          textcoords="offset points")
    front = sorted(frontier(points, quality), key=lambda p: p["speed_ratio"])
    axes.plot([p["speed_ratio"] for p in front], [p[quality] for p in front], color="tab:blue", alpha=0.4, zorder=2,
              label="frontier")
    axes.set_xscale("log")
    axes.set_xlabel("speed (x sentence-transformers encode, log scale)")
    axes.set_ylabel({"stsb": "STS-B test Spearman x100"}.get(quality, quality))
    axes.set_title(title, fontsize=8)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return _save(figure, output)


def frontier(points: Sequence[Mapping], quality: str = "stsb") -> list[Mapping]:
    """The points that no other point beats on both speed and quality (Pareto-optimal)."""
    return [p for p in points if not any(
        q["speed_ratio"] >= p["speed_ratio"] and q[quality] >= p[quality]
        and (q["speed_ratio"] > p["speed_ratio"] or q[quality] > p[quality]) for q in points)]


def _short_name(point: Mapping) -> str:
    if point.get("kind") == "off-the-shelf":
        return f"L{point['layer']}"
    if point.get("kind") == "distilled":
        return f"L{point['layer']} distilled"
    if point.get("kind") == "graph":  # "maskae openvino int8 static, distilled L3 (run)" -> "L3 distilled, openvino int8"
        backend, _, model = str(point["name"]).removeprefix("maskae ").partition(", ")
        model = model.split(" (")[0].replace("MiniLM ", "")
        return f"{' '.join(reversed(model.split(' ')))}, {' '.join(backend.split()[:2])}"
    return str(point["name"]).split(" (")[0]


def _save(figure: plt.Figure, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
