"""Export to stock transformers architectures, so that others can load a model without maskae.

A bottleneck-free MaskAE is, weight for weight, a stock `*ForMaskedLM` of `split_layer +
decoder_layers` layers, and its encoder is a stock base model of `split_layer` layers. Neither export
needs `trust_remote_code`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .errors import ExportError
from .modeling_maskae import MaskAEForMaskedLM, MaskAEModel

PARTS = ("full", "encoder")


def export_stock(
    model: MaskAEForMaskedLM | MaskAEModel,
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
        encoder = model.maskae if isinstance(model, MaskAEForMaskedLM) else model
        encoder.backbone.save_pretrained(out)
    else:
        if not isinstance(model, MaskAEForMaskedLM):
            raise ExportError("part='full' needs a MaskAEForMaskedLM; a MaskAEModel only has the encoder.")
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
    return out
