"""Semantic textual similarity: Spearman correlation between the cosine similarity of each pair's
embeddings and the gold score, for a model, its whitening and the baselines of the same width."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics.pairwise import paired_cosine_distances

from ..embeddings.embedder import Embedder
from ..embeddings.whitening import Whitening
from ..metrics import shared_metric
from .baselines import lsa_embeddings, pca_embeddings
from .frozen import chosen_whitening, code_width, full_width, load_embedder
from .results import StsResult
from .tasks import read_sts


def sts_spearman(embeddings1: np.ndarray, embeddings2: np.ndarray, scores: Sequence[float]) -> float:
    """Spearman correlation (×1, in [-1, 1]) between the pairs' cosine similarities and the gold scores."""
    # float64, so that near-ties among the cosines rank the same way in any computation
    cosine = 1.0 - paired_cosine_distances(np.asarray(embeddings1, np.float64), np.asarray(embeddings2, np.float64))
    return shared_metric("spearman").compute(predictions=cosine, references=scores)["spearmanr"]


def evaluate_sts(
    model: str | Path | Embedder,
    data: str | Path,
    *,
    layer: int | None = None,
    pooling: str = "mean",
    baseline: bool = False,
    dim: int | None = None,
    limit: int | None = None,
    whiten: bool | Whitening = True,
    **embed_kwargs,
) -> dict:
    """Spearman ×100 of cosine similarities against the gold scores of an STS tsv.

    With `baseline`, also LSA and PCA of the full-width embeddings at width `dim` (default: the
    code width), both fitted on the file's own sentences (no scores are used). The figure is for the
    raw embeddings; a whitening (`whiten`: a fitted one, or True for the model's stored one when it
    matches `layer` and `pooling`) adds the whitened figure under "whitened".
    """
    first, second, scores = read_sts(data, limit)
    embedder = load_embedder(model)
    texts = first + second
    vectors = embedder.embed(texts, layer=layer, pooling=pooling, whiten=False, **embed_kwargs)
    n = len(first)
    result = StsResult({
        "task": "sts",
        "pairs": n,
        "layer": layer,
        "pooling": pooling,
        "dim": int(vectors.shape[1]),
        "spearman_x100": 100 * sts_spearman(vectors[:n], vectors[n:], scores),
    })
    whitening = chosen_whitening(embedder, whiten, layer, pooling)
    if whitening is not None:
        white = whitening.apply(vectors)
        result["whitened"] = {"dim": whitening.dim, "fitted_on": whitening.num_texts,
                              "spearman_x100": 100 * sts_spearman(white[:n], white[n:], scores)}
    if baseline:
        dim = dim or code_width(embedder)
        (lsa,) = lsa_embeddings(texts, [texts], dim)
        full = full_width(embedder, texts, vectors, layer, pooling, embed_kwargs)
        (pca,) = pca_embeddings(full, [full], dim)
        result["baselines"] = {
            "lsa": {"dim": dim, "spearman_x100": 100 * sts_spearman(lsa[:n], lsa[n:], scores)},
            "pca": {"dim": dim, "from_dim": int(full.shape[1]), "spearman_x100": 100 * sts_spearman(pca[:n], pca[n:], scores)},
        }
    return result
