"""Export to a sentence-transformers model: where most embedding users (LangChain, LlamaIndex, MTEB,
vector databases) load embeddings from.

The directory is the stock encoder cut at the chosen layer (a plain `BertModel` of k layers, say) as the
Transformer module, then Pooling, an optional Dense (a fitted whitening), an optional Normalize. It is
written in the classic layout that sentence-transformers 3 and later all read (the one most Hub models
use), loads with no maskae and no remote code, and encodes exactly what `maskae.embed` returns at the same
layer and pooling.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..backbones import BACKBONES, get_backbone
from ..configuration_maskae import with_num_layers
from ..embeddings.choices import SENTENCE_POOLINGS
from ..embeddings.embedder import Embedder
from ..embeddings.whitening import CONFIG_KEY as WHITENING_KEY
from ..embeddings.whitening import Whitening
from ..errors import ExportError
from .graphs import write_sentence_transformers_graphs
from .guards import card_template, check_plots, hub_id, refuse_pickles
from .model_index import eval_results

logger = logging.getLogger(__name__)

TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction")
TEMPLATE = card_template("sentence-transformers.md.jinja")
# The oldest sentence-transformers that reads this layout (a Dense module's weights as safetensors).
LAYOUT_VERSION = "3.0.0"


def save_sentence_transformer(
    model_or_path: str | Path | PreTrainedModel,
    out_dir: str | Path,
    layer: int | None = None,
    pooling: str = "mean",
    normalize: bool = False,
    *,
    tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
    whitening: Whitening | None = None,
    backends: Sequence[str] = (),
    quantize: str | None = None,
    calibration_texts: Sequence[str] | None = None,
    metrics: Iterable[Mapping[str, Any] | EvalResult] | None = None,
    datasets: Iterable[str] | None = None,
    plots: Iterable[str | Path] | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write a directory that `SentenceTransformer(out_dir)` loads with sentence-transformers alone.

    `model_or_path` is a MaskAE model (without a bottleneck) or any stock encoder of a family maskae knows,
    loaded or as a directory / Hub id. `layer` is the hidden state to keep (default: a MaskAE model's code,
    a stock model's last layer); the layers above it are dropped, so a lower layer is also a faster model.
    `whitening` is a `maskae.Whitening` to apply as a Dense module (default: the one saved beside the model,
    when `maskae.embed` would apply it to this layer and pooling). `backends` ("onnx", "openvino") adds the
    Transformer module as graphs in sentence-transformers' own layout (`SentenceTransformer(out_dir,
    backend="onnx")`), int8 too with `quantize` (see `maskae.export.graphs`). `metrics`, `datasets` and `plots` go into the
    model card as in `save_for_hub`.
    """
    if pooling not in SENTENCE_POOLINGS:
        raise ExportError(f"unknown pooling {pooling!r} for a sentence-transformers export; use one of {', '.join(SENTENCE_POOLINGS)}.")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; export into a new or empty directory so no stale file gets uploaded.")
    plot_files = check_plots(plots)
    if isinstance(model_or_path, PreTrainedModel):
        embedder = Embedder.from_model(model_or_path, tokenizer)
    else:
        embedder = Embedder.from_pretrained(model_or_path, device="cpu", tokenizer=tokenizer)
    config = embedder.model.config
    if embedder.is_maskae and config.bottleneck is not None:
        raise ExportError(
            f"a {config.bottleneck} bottleneck has no stock equivalent, so sentence-transformers cannot load its code "
            "without maskae; export a bottleneck-free model, or embed with maskae.embed."
        )
    if isinstance(layer, bool) or not isinstance(layer, (int, type(None))):
        raise ExportError(f"layer={layer!r} must be one int (or None for the default); a list of layers has no stock equivalent.")
    depth = _depth(embedder, layer)
    encoder = truncated_encoder(embedder, depth)

    encoder.save_pretrained(out)
    embedder.tokenizer.save_pretrained(out)
    if whitening is None:
        whitening = _saved_whitening(embedder, layer, pooling)
    elif (_depth(embedder, whitening.layer), whitening.pooling) != (depth, pooling):
        raise ExportError(
            f"the whitening was fitted at layer {whitening.layer} with {whitening.pooling} pooling, not on this export's "
            f"layer {depth} with {pooling} pooling; pass layer and pooling to match it, or fit one for them."
        )
    modules = _write_modules(out, encoder.config, embedder, pooling, normalize, whitening)
    if backends:
        graphs = write_sentence_transformers_graphs(embedder, depth, out, backends, quantize, calibration_texts)
        logger.info("wrote %s", ", ".join(graphs))

    for plot in plot_files:
        (out / "plots").mkdir(exist_ok=True)
        (out / "plots" / plot.name).write_bytes(plot.read_bytes())
    name_or_path = str(getattr(embedder.model, "name_or_path", "") or "")
    card = model_card(
        embedder, depth, pooling, normalize, whitening, modules,
        results=eval_results(metrics), datasets=list(datasets or ()),
        base_model=base_model or hub_id(name_or_path) or hub_id(_maskae_backbone(embedder)),
        model_id=repo_id or out.resolve().name, plots=[f"plots/{plot.name}" for plot in plot_files],
    )
    card.save(out / "README.md")
    # defensive: transformers only writes safetensors, but a tokenizer class might not
    refuse_pickles(out, "maskae only shares safetensors; remove them and export again.")
    return out


def truncated_encoder(embedder: Embedder, depth: int) -> PreTrainedModel:
    """The stock base model that `embedder` runs up to hidden state `depth`: its layers above `depth` removed."""
    model = embedder.model
    base = model.backbone if embedder.is_maskae else model
    family = getattr(base.config, "model_type", None)
    full_depth = embedder.num_layers
    if family not in BACKBONES:
        if depth != full_depth:
            raise ExportError(
                f"maskae cannot cut a {family!r} model at layer {depth} (supported families: "
                f"{', '.join(sorted(BACKBONES))}); export its full depth ({full_depth}) instead."
            )
        return model
    adapter = get_backbone(base.config)
    stock_top = not embedder.is_maskae and depth == full_depth
    if adapter.final_norm and not stock_top:
        raise ExportError(
            f"a truncated {family} model applies its final norm to whatever layer is on top, so hidden state {depth} "
            "has no stock equivalent; export a stock model at its full depth, or embed with maskae.embed."
        )
    encoder = copy.deepcopy(base).cpu()
    encoder.set_submodule(adapter.layers_attr, nn.ModuleList(adapter.layers(encoder)[:depth]))
    encoder.config = with_num_layers(base.config, depth)
    if hasattr(encoder.config, WHITENING_KEY):  # the whitening becomes a Dense module, not a file beside the weights
        delattr(encoder.config, WHITENING_KEY)
    return encoder


def _write_modules(
    out: Path, config, embedder: Embedder, pooling: str, normalize: bool, whitening: Whitening | None
) -> list[str]:
    """modules.json and each module's config and weights; returns the modules' class names, in order."""
    width = config.hidden_size if hasattr(config, "hidden_size") else config.dim
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": embedder.max_length,
                                                   "do_lower_case": embedder.lowercase})
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": width,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    if whitening is not None:
        path = f"{len(modules)}_Dense"
        _write_dense(out / path, whitening, width)
        modules.append(("Dense", path))
    if normalize:
        modules.append(("Normalize", f"{len(modules)}_Normalize"))
    _write_json(out / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)
    ])
    _write_json(out / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": LAYOUT_VERSION, "transformers": transformers.__version__,
                        "pytorch": torch.__version__},
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    return [kind for kind, _ in modules]


def _write_dense(path: Path, whitening: Whitening, width: int) -> None:
    """A whitening (x - mean) @ matrix as sentence-transformers' Dense: weight matrix.T, bias -mean @ matrix,
    identity activation (a torch class, so it loads without trust_remote_code)."""
    mean = torch.as_tensor(whitening.mean, dtype=torch.float32)
    matrix = torch.as_tensor(whitening.matrix, dtype=torch.float32)
    if mean.shape != (width,) or matrix.ndim != 2 or matrix.shape[0] != width:
        raise ExportError(
            f"the whitening's mean {tuple(mean.shape)} and matrix {tuple(matrix.shape)} do not fit {width}-dim "
            "embeddings; fit the whitening on this model at this layer."
        )
    path.mkdir(parents=True)
    _write_json(path / "config.json", {"in_features": width, "out_features": matrix.shape[1], "bias": True,
                                       "activation_function": "torch.nn.modules.linear.Identity"})
    save_file({"linear.weight": matrix.T.contiguous(), "linear.bias": -(mean @ matrix)},
              str(path / "model.safetensors"), metadata={"format": "pt"})


def _saved_whitening(embedder: Embedder, layer: int | None, pooling: str) -> Whitening | None:
    """The whitening saved beside the model when `embed` would apply it to this layer and pooling."""
    whitening = embedder.whitening_for(layer, pooling)
    if whitening is None and embedder.whitening is not None:
        logger.warning("the model's whitening was fitted at layer %s with %s pooling, not on this export's "
                       "embeddings; exporting without it", embedder.whitening.layer, embedder.whitening.pooling)
    return whitening


def _depth(embedder: Embedder, layer: int | None) -> int:
    """The hidden state that `layer` names; None is a MaskAE model's code (its split layer) or a stock model's top."""
    resolved = embedder.resolve_layers(layer)
    return embedder.num_layers if resolved is None else resolved[0]


def _maskae_backbone(embedder: Embedder) -> str | None:
    return getattr(embedder.model.config.base_config, "_name_or_path", None) if embedder.is_maskae else None


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def model_card(
    embedder: Embedder,
    depth: int,
    pooling: str,
    normalize: bool,
    whitening: Whitening | None,
    modules: list[str],
    results: list[EvalResult],
    datasets: list[str],
    base_model: str | None,
    model_id: str,
    plots: list[str],
) -> ModelCard:
    """Render `model_cards/sentence-transformers.md.jinja`: sentence-transformers' own tags and usage."""
    config = embedder.model.config
    stock = config.base_config if embedder.is_maskae else config
    family = stock.model_type
    model_name = model_id.rsplit("/", 1)[-1]
    width = int(whitening.matrix.shape[1]) if whitening is not None else getattr(stock, "hidden_size", None)
    data = ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=[*TAGS, family, *(["maskae"] if embedder.is_maskae else [])],
        base_model=base_model,
        datasets=datasets or None,
        model_name=model_name,
        eval_results=results or None,
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        model_id=model_id,
        family=family,
        is_maskae=embedder.is_maskae,
        layer=depth,
        source_layers=(stock.n_layers if hasattr(stock, "n_layers") else stock.num_hidden_layers),
        split_layer=config.split_layer if embedder.is_maskae else None,
        pooling=pooling,
        normalize=normalize,
        whitened=whitening is not None,
        dimension=width,
        max_seq_length=embedder.max_length,
        modules=modules,
        base_model=base_model,
        datasets=datasets,
        results=results,
        plots=[{"path": path, "caption": Path(path).stem.replace("_", " ").replace("-", " ")} for path in plots],
    )
