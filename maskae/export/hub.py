"""Share a MaskAE on the Hugging Face Hub: an upload-ready directory (safetensors, self-contained model code,
tokenizer, model card); `push` uploads it.

The card is rendered from `model_cards/` through `huggingface_hub.ModelCard`, so its metadata (tags,
pipeline tag, base model, datasets, model-index) is exactly what the Hub parses. The model-index only
ever holds metrics that were passed in, i.e. measured.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedTokenizerBase

from ..auto_registration import register_auto_classes
from ..errors import ConfigError, ExportError
from ..modeling_maskae import MaskAEForMaskedLM, MaskAEPreTrainedModel
from .guards import (
    card_template,
    check_plots,
    check_self_contained,
    hub_id,
    refuse_pickles,
)
from .model_index import eval_results
from .stock import export_stock, saved_whitening

register_auto_classes()  # maskae checkpoints load through the Auto classes and save with their auto_map

logger = logging.getLogger(__name__)

# Written into config.json so that the Auto classes find maskae's code next to the weights.
AUTO_MAP = {
    "AutoConfig": "configuration_maskae.MaskAEConfig",
    "AutoModel": "modeling_maskae.MaskAEModel",
    "AutoModelForMaskedLM": "modeling_maskae.MaskAEForMaskedLM",
}
TAGS = ("maskae", "masked-autoencoder", "fill-mask", "feature-extraction")
STOCK_PARTS = ("full", "encoder")
TEMPLATE = card_template("maskae.md.jinja")



def save_for_hub(
    model: MaskAEPreTrainedModel,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    metrics: Iterable[Mapping[str, Any] | EvalResult] | None = None,
    datasets: Iterable[str] | None = None,
    recipe: Mapping[str, Any] | Any | None = None,
    *,
    stock: str | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
    plots: Iterable[str | Path] | None = None,
) -> Path:
    """Write `model` into `out_dir`, ready for `maskae push` or any Hub upload.

    By default the directory holds maskae's own format plus the code files that define it, so that
    `trust_remote_code=True` loads it with only torch and transformers installed. `stock="full"` (a plain
    `*ForMaskedLM`) or `stock="encoder"` (a plain base model of `split_layer` layers) need no remote code.
    `metrics` are measured results, each `{"metric": "masked_accuracy", "value": 0.61, "dataset": "wikitext"}`
    (optional keys: "split", "config", "dataset_name", "layer", "task"); `recipe` is the resolved training
    config (a mapping or dataclass with "noise", "data", "training", ... sections); `plots` are image files.
    """
    if stock not in (None, *STOCK_PARTS):
        raise ExportError(f"unknown stock export {stock!r}; use 'full', 'encoder', or None for maskae's own format.")
    if stock != "encoder" and not isinstance(model, MaskAEForMaskedLM):
        raise ExportError(
            f"only a MaskAEForMaskedLM can be shared whole; share a {type(model).__name__} with stock='encoder' instead."
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; export into a new or empty directory so no stale file gets uploaded.")
    recipe = _plain(recipe)
    results = eval_results(metrics)
    plot_files = check_plots(plots)

    if stock is None:
        # Every Auto class, not only the one of the saved object, so that AutoModel (feature extraction)
        # and AutoModelForMaskedLM (fill-mask) both find their class in the shipped code.
        model.config.auto_map = dict(AUTO_MAP)
        model.save_pretrained(out)
        check_self_contained(out, AUTO_MAP)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        whitening = saved_whitening(model)
        if whitening is not None:
            whitening.save(out)
    else:
        export_stock(model, out, part=stock, tokenizer=tokenizer)
    if tokenizer is None:
        logger.warning("no tokenizer given: %s cannot be used by pipelines until one is saved into it", out)

    for plot in plot_files:
        (out / "plots").mkdir(exist_ok=True)
        shutil.copyfile(plot, out / "plots" / plot.name)
    card = model_card(
        model,
        layout=stock or "maskae",
        results=results,
        datasets=list(datasets or ()),
        recipe=recipe,
        base_model=base_model or hub_id(((recipe or {}).get("model") or {}).get("backbone"))
        or hub_id(getattr(model.config.base_config, "_name_or_path", None)),
        model_id=repo_id or out.resolve().name,
        plots=[f"plots/{plot.name}" for plot in plot_files],
        tokenizer_saved=tokenizer is not None,
    )
    card.save(out / "README.md")
    # defensive: transformers only writes safetensors, but a tokenizer class might not
    refuse_pickles(out, "maskae only shares safetensors; remove them and export again.")
    return out


def model_card(
    model: MaskAEPreTrainedModel,
    layout: str,
    results: list[EvalResult],
    datasets: list[str],
    recipe: dict | None,
    base_model: str | None,
    model_id: str,
    plots: list[str],
    tokenizer_saved: bool,
) -> ModelCard:
    """Render `model_cards/maskae.md.jinja` for `model` exported as `layout` ("maskae", "full" or "encoder")."""
    config = model.config
    base = config.base_config
    family = base.model_type
    model_name = model_id.rsplit("/", 1)[-1]
    can_fill = layout != "encoder"
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="fill-mask" if can_fill else "feature-extraction",
        tags=[tag for tag in TAGS if can_fill or tag != "fill-mask"] + [family],
        base_model=base_model,
        datasets=datasets or None,
        model_name=model_name,
        eval_results=results or None,
    )
    encoder = model.get_encoder()
    encoder_parameters = sum(p.numel() for p in encoder.parameters())
    decoder_parameters = None
    if isinstance(model, MaskAEForMaskedLM) and layout != "encoder":
        decoder_parameters = f"{sum(p.numel() for p in model.parameters()) - encoder_parameters:,}"
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        model_id=model_id,
        layout=layout,
        family=family,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        max_positions=getattr(base, "max_position_embeddings", None),
        total_layers=config.split_layer + config.decoder_layers,
        split_layer=config.split_layer,
        encoder_parameters=f"{encoder_parameters:,}",
        decoder_parameters=decoder_parameters,
        decoder_description=_describe_decoder(config, layout),
        bottleneck=config.bottleneck,
        bottleneck_description=_describe_bottleneck(config),
        code_dim=config.code_dim,
        pooling=config.pooling,
        code_description=(
            f"one {config.hidden_size}-dim vector per text ([batch, {config.hidden_size}])"
            if config.bottleneck == "sentence"
            else f"one {config.code_dim}-dim vector per token ([batch, seq, {config.code_dim}])"
        ),
        objective=config.objective,
        rtd_weight=f"{config.rtd_weight:g}",
        stock_mlm_class=encoder.backbone_adapter.mlm_class,
        stock_base_class=type(encoder.backbone).__name__,
        noise=_yaml(recipe.get("noise")) if recipe else None,
        recipe=_yaml({key: value for key, value in recipe.items() if key != "noise"}) if recipe else None,
        datasets=datasets,
        base_model=base_model,
        results=results,
        plots=[{"path": path, "caption": Path(path).stem.replace("_", " ").replace("-", " ")} for path in plots],
        tokenizer_saved=tokenizer_saved,
    )


def _plain(recipe: Mapping[str, Any] | Any | None) -> dict | None:
    """A recipe (mapping or dataclass, possibly nested, possibly holding paths) as plain YAML-able data."""
    if recipe is None:
        return None
    if dataclasses.is_dataclass(recipe) and not isinstance(recipe, type):
        recipe = dataclasses.asdict(recipe)
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"recipe must be a mapping or a dataclass, not {type(recipe).__name__}.")
    return json.loads(json.dumps(recipe, default=str))


def _yaml(value: Any) -> str | None:
    return None if value is None else yaml.safe_dump(value, sort_keys=False).strip()


def _describe_decoder(config, layout: str) -> str:
    if layout == "encoder":
        return "not included in this export"
    family, k = config.base_config.model_type, config.decoder_layers
    layers = f"{k} {family} layer{'s' if k != 1 else ''}"
    if config.decoder == "linear":
        return f"the {family} MLM head only, on the encoder output (a classic masked-language model)"
    if config.decoder == "layers":
        return f"the backbone's remaining {layers} and its MLM head"
    return f"{layers}, freshly initialised, and the MLM head"


def _describe_bottleneck(config) -> str:
    if config.bottleneck == "projection":
        return f"projection: each token state goes {config.hidden_size} → {config.bottleneck_dim} → {config.hidden_size}"
    if config.bottleneck == "sentence":
        return (
            f"sentence: the decoder reads one {config.pooling}-pooled vector plus a copy of the input "
            f"with {config.decoder_mask_prob:.0%} of its tokens masked"
        )
    return "none: the decoder reads the encoder's token states"
