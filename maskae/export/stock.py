"""Export to stock transformers architectures, so that others can load a model without maskae.

A bottleneck-free MaskAE is, weight for weight, a stock `*ForMaskedLM` of `split_layer +
decoder_layers` layers, and its encoder is a stock base model of `split_layer` layers. Neither export
needs `trust_remote_code`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..auto_registration import register_auto_classes
from ..embeddings.whitening import Whitening
from ..errors import ExportError
from ..modeling_maskae import MaskAEForMaskedLM, MaskAEPreTrainedModel

register_auto_classes()  # maskae checkpoints load through the Auto classes and save with their auto_map

PARTS = ("full", "encoder")


def export_stock(
    model: MaskAEPreTrainedModel,
    out_dir: str | Path,
    part: str = "full",
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write `model` as a stock checkpoint: the whole autoencoder (`part="full"`, e.g. a
    `BertForMaskedLM`) or only its encoder (`part="encoder"`, e.g. a `BertModel` of N layers)."""
    if part not in PARTS:
        raise ExportError(f"unknown export part {part!r}; use 'full' or 'encoder'.")
    config = model.config
    adapter = model.backbone_adapter
    out = Path(out_dir)
    if part == "encoder":
        if config.bottleneck == "projection":
            raise ExportError(
                "a projection bottleneck has no stock equivalent; export part='encoder' of the unprojected "
                "encoder is not the code, so save it with save_pretrained (trust_remote_code) instead."
            )
        model.get_encoder().backbone.save_pretrained(out)
    else:
        if not isinstance(model, MaskAEForMaskedLM):
            raise ExportError(f"part='full' needs a MaskAEForMaskedLM (a stock {adapter.mlm_class}); a "
                              f"{type(model).__name__} has no stock equivalent; export part='encoder'.")
        if config.bottleneck is not None:
            raise ExportError(
                f"a {config.bottleneck} bottleneck has no stock {adapter.mlm_class} equivalent; export "
                "part='encoder' or share it with save_pretrained and trust_remote_code."
            )
        stock = adapter.mlm_model_class()(config.base_config)
        state = {adapter.stock_key(key, config.split_layer): value for key, value in model.state_dict().items()}
        stock.load_state_dict(state, strict=True)
        stock.to(model.dtype).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    whitening = saved_whitening(model)
    if whitening is not None:
        stock_whitening(whitening, config).save(out)
    return out


def saved_whitening(model: MaskAEPreTrainedModel) -> Whitening | None:
    """The whitening stored beside the checkpoint `model` was loaded from, if its config records one."""
    if not getattr(model.config, "whitening", None) or not model.name_or_path:
        return None
    return Whitening.load(model.name_or_path)


def stock_whitening(whitening: Whitening, config) -> Whitening:
    """The same whitening for a stock export, whose default output is its last layer rather than the
    code: a whitening of the code (layer None) names the encoder's top layer (and, for a sentence
    bottleneck, its pooling) explicitly."""
    if whitening.layer is not None:
        return whitening
    pooling = config.pooling if config.bottleneck == "sentence" else whitening.pooling
    return dataclasses.replace(whitening, layer=config.split_layer, pooling=pooling)
