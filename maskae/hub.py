"""Share a MaskAE on the Hugging Face Hub: an upload-ready directory (safetensors, self-contained model code,
tokenizer, model card) and the push that uploads it.

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
from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import PreTrainedTokenizerBase

from .errors import CheckpointError, ConfigError, ExportError, MaskAEError, cause
from .export import export_stock, saved_whitening
from .modeling_maskae import MaskAEForMaskedLM, MaskAEPreTrainedModel

logger = logging.getLogger(__name__)

# Written into config.json so that the Auto classes find maskae's code next to the weights.
AUTO_MAP = {
    "AutoConfig": "configuration_maskae.MaskAEConfig",
    "AutoModel": "modeling_maskae.MaskAEModel",
    "AutoModelForMaskedLM": "modeling_maskae.MaskAEForMaskedLM",
}
TAGS = ("maskae", "masked-autoencoder", "fill-mask", "feature-extraction")
STOCK_PARTS = ("full", "encoder")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")
TEMPLATE = Path(__file__).parent / "resources" / "maskae.md.jinja"  # a link to model_cards/maskae.md.jinja

# Metric names that maskae's evaluation reports -> (Hub task type, Hub metric type, readable name).
KNOWN_METRICS = {
    "masked_accuracy": ("fill-mask", "accuracy", "Masked-token accuracy"),
    "pseudo_perplexity": ("fill-mask", "perplexity", "Pseudo-perplexity"),
    "perplexity": ("fill-mask", "perplexity", "Masked-token perplexity"),
    "replaced_accuracy": ("token-classification", "accuracy", "Replaced-token detection accuracy"),
    "sts_spearman": ("sentence-similarity", "spearmanr", "STS Spearman correlation"),
    "probe_accuracy": ("text-classification", "accuracy", "Linear-probe accuracy"),
}


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
    plot_files = _check_plots(plots)

    if stock is None:
        # Every Auto class, not only the one of the saved object, so that AutoModel (feature extraction)
        # and AutoModelForMaskedLM (fill-mask) both find their class in the shipped code.
        model.config.auto_map = dict(AUTO_MAP)
        model.save_pretrained(out)
        _check_self_contained(out)
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
        base_model=base_model or _hub_id(((recipe or {}).get("model") or {}).get("backbone"))
        or _hub_id(getattr(model.config.base_config, "_name_or_path", None)),
        model_id=repo_id or out.resolve().name,
        plots=[f"plots/{plot.name}" for plot in plot_files],
        tokenizer_saved=tokenizer is not None,
    )
    card.save(out / "README.md")
    pickles = _pickle_files(out)
    if pickles:  # defensive: transformers only writes safetensors, but a tokenizer class might not
        raise ExportError(f"{out} received pickle files ({', '.join(pickles)}); maskae only shares safetensors.")
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


def eval_results(metrics: Iterable[Mapping[str, Any] | EvalResult] | None) -> list[EvalResult]:
    """Measured metrics -> the Hub's `EvalResult`s; maskae's own metric names get their task and metric type."""
    results = []
    for record in metrics or ():
        if isinstance(record, EvalResult):
            results.append(record)
            continue
        if not isinstance(record, Mapping) or not all(record.get(key) is not None for key in ("metric", "value", "dataset")):
            raise ConfigError(
                f"metric record {record!r} needs 'metric', 'value' and 'dataset', "
                "e.g. {'metric': 'masked_accuracy', 'value': 0.61, 'dataset': 'wikitext'}."
            )
        name = str(record["metric"])
        task_type, metric_type, readable = KNOWN_METRICS.get(name, (record.get("task"), name, name))
        task_type = record.get("task", task_type)
        if task_type is None:
            raise ConfigError(
                f"metric {name!r} is not one of maskae's ({', '.join(KNOWN_METRICS)}); add its 'task', e.g. 'fill-mask'."
            )
        try:
            value = float(record["value"])
        except (TypeError, ValueError):
            raise ConfigError(f"metric {name!r} has value {record['value']!r}; it must be a number.") from None
        if record.get("layer") is not None:
            readable = f"{readable} (layer {record['layer']})"
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=str(record["dataset"]),
                dataset_name=str(record.get("dataset_name") or record["dataset"]),
                dataset_config=record.get("config"),
                dataset_split=record.get("split"),
                metric_type=metric_type,
                metric_name=readable,
                metric_value=value,
            )
        )
    return results


def metric_records(
    results: Mapping[str, Any], dataset: str, split: str | None = None, config: str | None = None,
    dataset_name: str | None = None,
) -> list[dict[str, Any]]:
    """Records for `eval_results` from a flat {metric: value} dict such as the trainer's eval_results.json,
    measured on `dataset`; keys that are not maskae metrics (step, throughput, ...) are left out."""
    return [
        {"metric": name, "value": value, "dataset": dataset, "split": split, "config": config,
         "dataset_name": dataset_name or dataset}
        for name, value in results.items()
        if name in KNOWN_METRICS and value is not None
    ]


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload a directory written by `save_for_hub` to the Hub model repo `repo_id` (created if needed)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"{repo_id!r} is not a valid Hub repo id; use ORG/NAME made of letters, digits, '-', '_' and '.', "
            "e.g. my-org/maskae-bert."
        ) from None
    folder = Path(folder)
    operations = upload_operations(folder)
    token = get_token()
    if token is None:
        raise MaskAEError("no Hugging Face token found; log in with `hf auth login` or set HF_TOKEN to a write token.")
    api = HfApi(token=token, library_name="maskae")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or f"Upload {folder.resolve().name} with maskae",
            revision=revision,
        )
    except Exception as error:  # the Hub client raises HTTP, network and offline-mode errors of many types
        raise MaskAEError(
            f"the upload of {folder} to the Hub repo {repo_id} failed ({cause(error)}); check the network (and that "
            "HF_HUB_OFFLINE is unset), that your token may write to that repo, then rerun."
        ) from None


def upload_operations(folder: Path) -> list[CommitOperationAdd]:
    """One upload per file of `folder` (hidden files left out), after checking that it is a safe model directory."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json; create an upload directory with `maskae export`.")
    pickles = _pickle_files(folder)
    if pickles:
        raise ExportError(
            f"{folder} holds pickle files ({', '.join(pickles)}), which maskae never uploads; "
            "re-export it with `maskae export`."
        )
    files = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    return [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path)) for path in files]


def _pickle_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.suffix.lower() in PICKLE_SUFFIXES)


def _check_self_contained(out: Path) -> None:
    """The files that config.json's auto_map points to must be there (save_pretrained copies them, and what
    they import relatively, for classes registered with `register_for_auto_class`)."""
    wanted = [f"{entry.split('.')[0]}.py" for entry in AUTO_MAP.values()]
    missing = [name for name in wanted if not (out / name).is_file()]
    if missing:
        raise ExportError(
            f"save_pretrained wrote no {', '.join(missing)} into {out}; import maskae (which registers its classes "
            "for the Auto classes) before exporting."
        )


def _check_plots(plots: Iterable[str | Path] | None) -> list[Path]:
    files = [Path(plot) for plot in plots or ()]
    for plot in files:
        if not plot.is_file() or plot.suffix.lower() not in PLOT_SUFFIXES:
            raise ExportError(f"plot {plot} is not an image file ({', '.join(PLOT_SUFFIXES)}); pass existing plots only.")
    return files


def _hub_id(name: str | None) -> str | None:
    """`name` if it is a Hub model id, None if it is empty or a local path (which is no `base_model`)."""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


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
