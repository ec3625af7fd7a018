"""The classic linear embeddings of the same width that a model's code has to beat: LSA (TF-IDF +
truncated SVD) of the text, and PCA of the model's own full-width embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from ..errors import ConfigError


def lsa_embeddings(fit_texts: Sequence[str], texts: Sequence[Sequence[str]], dim: int) -> list[np.ndarray]:
    """TF-IDF + truncated SVD (latent semantic analysis) at width `dim`, fitted on `fit_texts` and
    applied to each list in `texts`: the classic linear text embedding of the same size."""
    tfidf = TfidfVectorizer().fit(fit_texts)
    vocabulary = len(tfidf.vocabulary_)
    if dim >= vocabulary:
        raise ConfigError(f"the LSA baseline needs dim < the TF-IDF vocabulary ({vocabulary} words); lower --dim.")
    svd = TruncatedSVD(n_components=dim, random_state=0).fit(tfidf.transform(fit_texts))
    return [svd.transform(tfidf.transform(t)) for t in texts]


def pca_embeddings(fit_x: np.ndarray, xs: Sequence[np.ndarray], dim: int) -> list[np.ndarray]:
    """PCA of full-width embeddings down to `dim`, fitted on `fit_x` and applied to each array of `xs`:
    the linear reduction that a bottleneck of width `dim` has to beat."""
    if dim > min(fit_x.shape):
        raise ConfigError(
            f"the PCA baseline needs dim <= min(examples, width) = {min(fit_x.shape)}; lower --dim or use more data."
        )
    pca = PCA(n_components=dim, random_state=0).fit(fit_x)
    return [pca.transform(x) for x in xs]
