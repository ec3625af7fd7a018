"""maskae: masked text autoencoders on any transformer encoder, split at layer N."""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining

from .collator import DataCollatorForDenoising
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
from .export_sentence_transformers import save_sentence_transformer
from .hub import save_for_hub
from .embeddings import Embedder, embed
from .whitening import Whitening, fit_whitening
from .modeling_maskae import MaskAEForMaskedLM, MaskAEForReplacedTokenDetection, MaskAEModel, MaskAEPreTrainedModel
from .noise import NoiseConfig

AutoConfig.register("maskae", MaskAEConfig, exist_ok=True)
AutoModel.register(MaskAEConfig, MaskAEModel, exist_ok=True)
AutoModelForMaskedLM.register(MaskAEConfig, MaskAEForMaskedLM, exist_ok=True)
AutoModelForPreTraining.register(MaskAEConfig, MaskAEForReplacedTokenDetection, exist_ok=True)
# save_pretrained / push_to_hub then ship the model code and an auto_map (trust_remote_code without maskae).
MaskAEConfig.register_for_auto_class()
MaskAEModel.register_for_auto_class("AutoModel")
MaskAEForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
MaskAEForReplacedTokenDetection.register_for_auto_class("AutoModelForPreTraining")

__version__ = "0.1.0"

__all__ = [
    "DataCollatorForDenoising",
    "NoiseConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "MaskAEConfig",
    "MaskAEError",
    "MaskAEForMaskedLM",
    "MaskAEForReplacedTokenDetection",
    "MaskAEModel",
    "MaskAEPreTrainedModel",
    "TokenizerError",
    "export_stock",
    "save_sentence_transformer",
    "save_for_hub",
    "Embedder",
    "embed",
    "Whitening",
    "fit_whitening",
    "UnsupportedBackboneError",
]
