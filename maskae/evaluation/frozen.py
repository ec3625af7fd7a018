"""What STS, probes and layer sweeps share about a frozen encoder: load it once, the width of its code,
the un-reduced embeddings the PCA baseline starts from, and the whitening to report beside the raw figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..embeddings.embedder import Embedder
from ..embeddings.graphs import is_graph_export, read_graph_config
from ..embeddings.whitening import Whitening
from ..errors import ConfigError


def load_embedder(model: str | Path | Embedder, dtype: str | None = None) -> Embedder:
    """Load a checkpoint once: sweeps and baselines embed the same texts at several layers. An exported graph
    has one layer and its whitening baked in, so the raw, whitened and per-layer figures cannot all come from it."""
    if isinstance(model, Embedder):
        return model
    if is_graph_export(model):
        config = read_graph_config(model)
        raise ConfigError(f"{model} holds exported graphs, which evaluate cannot sweep or un-whiten; pass the model "
                          f"they were exported from ({config.get('source') or 'its directory'}) with --layer "
                          f"{config['layer']}, or use benchmarks/bench_embed.py --backends to score the graphs.")
    return Embedder.from_pretrained(model, dtype=dtype)


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
