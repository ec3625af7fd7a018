"""maskae: masked text autoencoders on any transformer encoder, split at layer N.

The public names load on first use (PEP 562), so that `maskae --help` and `import maskae.errors` stay
light; the first one that needs the model registers MaskAE with transformers' Auto classes
(`auto_registration`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "MaskAEConfig": "configuration_maskae",
    "MaskAEForMaskedLM": "modeling_maskae",
    "MaskAEForReplacedTokenDetection": "modeling_maskae",
    "MaskAEModel": "modeling_maskae",
    "MaskAEPreTrainedModel": "modeling_maskae",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "ExportError": "errors",
    "MaskAEError": "errors",
    "MissingExtraError": "errors",
    "TokenizerError": "errors",
    "UnsupportedBackboneError": "errors",
    "DataCollatorForDenoising": "data.collator",
    "NoiseConfig": "data.noise_config",
    "Embedder": "embeddings.embedder",
    "embed": "embeddings.embedder",
    "GraphEmbedder": "embeddings.graphs",
    "Whitening": "embeddings.whitening",
    "load_embeddings": "embeddings.stored",
    "build_index": "search.index",
    "SearchIndex": "search.index",
    "fit_whitening": "embeddings.embedder",
    "export_stock": "export.stock",
    "export_graphs": "export.graphs",
    "save_for_hub": "export.hub",
    "save_sentence_transformer": "export.sentence_transformers",
    "adapt": "training.run",
}
__all__ = list(_EXPORTS)

def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'maskae' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module != "errors":
        from .auto_registration import register_auto_classes

        register_auto_classes()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from .configuration_maskae import MaskAEConfig
    from .data.collator import DataCollatorForDenoising
    from .data.noise_config import NoiseConfig
    from .embeddings.embedder import Embedder, embed, fit_whitening
    from .embeddings.graphs import GraphEmbedder
    from .embeddings.whitening import Whitening
    from .errors import (
        CheckpointError,
        ConfigError,
        DataError,
        ExportError,
        MaskAEError,
        MissingExtraError,
        TokenizerError,
        UnsupportedBackboneError,
    )
    from .export.graphs import export_graphs
    from .export.hub import save_for_hub
    from .export.sentence_transformers import save_sentence_transformer
    from .export.stock import export_stock
    from .modeling_maskae import (
        MaskAEForMaskedLM,
        MaskAEForReplacedTokenDetection,
        MaskAEModel,
        MaskAEPreTrainedModel,
    )
    from .training.run import adapt
