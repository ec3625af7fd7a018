"""What STS, probes and layer sweeps share about a frozen encoder: load it once, the width of its code,
the un-reduced embeddings the PCA baseline starts from, and the whitening to report beside the raw figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..embeddings.embedder import Embedder
from ..embeddings.whitening import Whitening


def load_embedder(model: str | Path | Embedder) -> Embedder:
    """Load a checkpoint once: sweeps and baselines embed the same texts at several layers."""
    return model if isinstance(model, Embedder) else Embedder.from_pretrained(model)


def code_width(embedder: Embedder) -> int:
    """Width of the default embeddings: the bottleneck's for a MaskAE model, the hidden size otherwise."""
    config = embedder.model.config
    if embedder.is_maskae:
        return config.code_dim
    return int(getattr(config, "hidden_size", None) or config.dim)


def full_width(
    embedder: Embedder, texts: list[str], vectors: np.ndarray, layer: int | None, pooling: str, embed_kwargs: dict
) -> np.ndarray:
    """The un-reduced embeddings that the PCA baseline starts from: the hidden state at `layer`, or at
    the top of the encoder (before any bottleneck) by default; `vectors` when they already are that."""
    full_layer = embedder.resolve_layers(embedder.num_layers if layer is None else layer)
    if embedder.resolve_layers(layer) == full_layer:
        return vectors
    return embedder.embed(texts, layer=full_layer[0], pooling=pooling, whiten=False, **embed_kwargs)


def chosen_whitening(embedder: Embedder, whiten: bool | Whitening, layer: int | None, pooling: str) -> Whitening | None:
    """The whitening to report beside the raw figures: one fitted for this request, or (`whiten=True`)
    the one stored with the model when it was fitted on this layer and pooling."""
    if isinstance(whiten, Whitening):
        return whiten
    return embedder.whitening_for(layer, pooling) if whiten else None
