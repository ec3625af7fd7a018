"""maskae: masked text autoencoders on any transformer encoder, split at layer N."""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from .configuration_maskae import MaskAEConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    MaskAEError,
    TokenizerError,
    UnsupportedBackboneError,
)
from .export import export_stock
from .modeling_maskae import MaskAEForMaskedLM, MaskAEModel, MaskAEPreTrainedModel

AutoConfig.register("maskae", MaskAEConfig, exist_ok=True)
AutoModel.register(MaskAEConfig, MaskAEModel, exist_ok=True)
AutoModelForMaskedLM.register(MaskAEConfig, MaskAEForMaskedLM, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "MaskAEConfig",
    "MaskAEError",
    "MaskAEForMaskedLM",
    "MaskAEModel",
    "MaskAEPreTrainedModel",
    "TokenizerError",
    "export_stock",
    "UnsupportedBackboneError",
]
