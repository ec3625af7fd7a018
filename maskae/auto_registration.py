"""MaskAE's place in transformers' Auto classes, registered once by whichever part first loads or saves a
model (a module of its own, not the package `__init__`, so that it also works when a folder named
`maskae` in the working directory shadows the package's `__init__`)."""

from __future__ import annotations

_registered = False


def register_auto_classes() -> None:
    """Register MaskAE with transformers' Auto classes, once; `save_pretrained` and `push_to_hub` then ship
    the model code and an auto_map (trust_remote_code without maskae)."""
    global _registered
    if _registered:
        return
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
    )

    from .configuration_maskae import MaskAEConfig
    from .modeling_maskae import (
        MaskAEForMaskedLM,
        MaskAEForReplacedTokenDetection,
        MaskAEModel,
    )

    AutoConfig.register("maskae", MaskAEConfig, exist_ok=True)
    AutoModel.register(MaskAEConfig, MaskAEModel, exist_ok=True)
    AutoModelForMaskedLM.register(MaskAEConfig, MaskAEForMaskedLM, exist_ok=True)
    AutoModelForPreTraining.register(MaskAEConfig, MaskAEForReplacedTokenDetection, exist_ok=True)
    MaskAEConfig.register_for_auto_class()
    MaskAEModel.register_for_auto_class("AutoModel")
    MaskAEForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
    MaskAEForReplacedTokenDetection.register_for_auto_class("AutoModelForPreTraining")
    _registered = True
