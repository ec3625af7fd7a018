"""`maskae export DIR --out HUB_DIR [--stock | --encoder-only | --sentence-transformers] [--onnx] [--openvino]`:
a directory ready to upload to the Hub, or graphs that embed on CPU runtimes.

DIR is a trained model directory (what `maskae train` writes); with --sentence-transformers, --onnx or
--openvino it may also be any stock encoder (a directory or Hub id). Its recipe.yaml and eval_results.json, when present, go
into the model card: the recipe as the training section, the measured metrics as the model-index; its
log.jsonl becomes a training-curves figure in the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..embeddings.choices import CALIBRATION_SIZE, QUANTIZATIONS, SENTENCE_POOLINGS
from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

logger = logging.getLogger(__name__)

# What `maskae train` evaluates on when the recipe names no corpus: the packaged WikiText-2 excerpt.
PACKAGED_EVAL = {"dataset": "Salesforce/wikitext", "config": "wikitext-2-v1", "split": "validation",
                 "dataset_name": "WikiText-2 (validation excerpt packaged with maskae)"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a trained model as a directory ready to upload to the Hugging Face Hub",
        description=(
            "Write the model in DIR into HUB_DIR with safetensors weights (never pickle), its tokenizer and a "
            "model card (README.md). By default the model keeps maskae's format and ships its code, so that "
            "transformers loads it with trust_remote_code=True and no maskae installed; --stock and "
            "--encoder-only write plain transformers models that need no remote code. DIR/recipe.yaml and "
            "DIR/eval_results.json, when present, fill the card's training and evaluation sections. --onnx and "
            "--openvino write the layer-K sentence encoder as ONNX Runtime / OpenVINO graphs (fp32, or int8 with "
            "--quantize) that maskae embed runs; with --sentence-transformers they go into its onnx/ and openvino/ "
            "folders."
        ),
        epilog="examples: maskae export runs/tiny --out hub/tiny --dataset Salesforce/wikitext && "
        "maskae push hub/tiny --repo-id my-org/maskae-tiny; maskae export sentence-transformers/all-MiniLM-L6-v2 "
        "--out graphs/minilm-l3 --openvino --layer 3 --quantize int8 --calibrate corpus.txt",
    )
    parser.add_argument("model", metavar="DIR", type=Path,
                        help="trained MaskAE directory (save_pretrained output); with --sentence-transformers also "
                        "a stock encoder's directory or Hub id")
    parser.add_argument("--out", required=True, type=Path, metavar="HUB_DIR", help="new or empty directory to write")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument(
        "--stock", action="store_true",
        help="the whole autoencoder as the stock *ForMaskedLM (bottleneck-free models only)",
    )
    layout.add_argument(
        "--encoder-only", action="store_true",
        help="only the encoder, as the stock base model of split_layer layers (no projection bottleneck)",
    )
    layout.add_argument(
        "--sentence-transformers", action="store_true",
        help="a sentence-transformers model (encoder cut at --layer, pooling, optional normalisation) that "
        "SentenceTransformer(HUB_DIR) loads without maskae; DIR may also be any stock encoder or Hub id",
    )
    parser.add_argument("--onnx", action="store_true",
                        help="an ONNX graph from (input_ids, attention_mask) to the sentence vector `maskae embed` "
                        "writes (layer, pooling, stored whitening, normalisation inside), for maskae embed --backend "
                        "onnx; with --sentence-transformers, ST's own onnx/ folder instead")
    parser.add_argument("--openvino", action="store_true",
                        help="the same as an OpenVINO model (maskae embed --backend openvino); with "
                        "--sentence-transformers, ST's openvino/ folder")
    parser.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="with --onnx/--openvino: int8 graphs (ONNX: dynamic int8 with the kernels this CPU has; "
                        "OpenVINO: int8 weights, or static int8 with --calibrate)")
    parser.add_argument("--calibrate", metavar="CORPUS",
                        help=f"with --openvino --quantize int8: static int8 calibrated on the first {CALIBRATION_SIZE} "
                        "texts of CORPUS (any input `maskae embed` reads; text like what you will embed)")
    parser.add_argument("--text-column", default="text", help="column of --calibrate's texts (default: text)")
    parser.add_argument("--layer", type=int, help="with --sentence-transformers, --onnx or --openvino: the hidden "
                        "state to keep (default: a MaskAE model's code, a stock model's last layer); the layers above "
                        "it are dropped")
    parser.add_argument("--pooling", choices=SENTENCE_POOLINGS, help="with --sentence-transformers, --onnx or "
                        "--openvino: how token vectors become one sentence vector (default: mean)")
    parser.add_argument("--normalize", action="store_true",
                        help="with --sentence-transformers, --onnx or --openvino: unit-length vectors")
    parser.add_argument("--tokenizer", help="tokenizer directory or Hub id (default: the one saved in DIR)")
    parser.add_argument("--recipe", type=Path, help="resolved training recipe YAML (default: DIR/recipe.yaml)")
    parser.add_argument(
        "--metrics", type=Path,
        help="measured metrics JSON (default: DIR/eval_results.json): a {metric: value} dict, or a list of "
        '{"metric", "value", "dataset"[, "split", "config", "layer", "task"]} records',
    )
    parser.add_argument(
        "--eval-dataset",
        help="Hub dataset id that a {metric: value} dict was measured on (default: the recipe's data.validation "
        "or data.train, else the packaged WikiText-2 validation excerpt)",
    )
    parser.add_argument(
        "--dataset", dest="datasets", action="append", metavar="ID",
        help="Hub id of a training dataset for the card (repeatable; default: the recipe's data.train when it is "
        "a Hub id, Salesforce/wikitext for the packaged corpus)",
    )
    parser.add_argument("--plot", dest="plots", action="append", type=Path, default=[], metavar="IMAGE",
                        help="an image to show in the card, e.g. a loss curve (repeatable)")
    parser.add_argument("--base-model", help="Hub id of the backbone (default: the recipe's model.backbone if a Hub id)")
    parser.add_argument("--repo-id", help="the Hub repo this will be pushed to, used in the card's code snippets")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.hub import save_for_hub
    from ..loading import load_checked
    from ..modeling_maskae import MaskAEForMaskedLM, MaskAEForReplacedTokenDetection

    graphs = [name for name in ("onnx", "openvino") if getattr(args, name)]
    if graphs and (args.stock or args.encoder_only):
        raise ConfigError("--onnx and --openvino write sentence-vector graphs, not a --stock or --encoder-only model; "
                          "remove one of them.")
    if (args.quantize or args.calibrate) and not graphs:
        raise ConfigError("--quantize and --calibrate make int8 graphs; pass --onnx or --openvino with them.")
    if args.sentence_transformers:
        return _run_sentence_transformers(args, graphs)
    if graphs:
        return _run_graphs(args, graphs)
    if args.layer is not None or args.pooling is not None or args.normalize:
        raise ConfigError("--layer, --pooling and --normalize shape a sentence-transformers or graph export; add "
                          "--sentence-transformers, --onnx or --openvino, or drop them.")
    if not (args.model / "config.json").is_file():
        raise CheckpointError(f"{args.model} has no config.json; pass the directory that `maskae train` wrote.")
    model_class = MaskAEForMaskedLM
    config = _config(args.model)
    if config.model_type != "maskae":
        raise CheckpointError(
            f"{args.model} is a stock {config.model_type} checkpoint, not a maskae run; export it with "
            "--sentence-transformers (any --layer), or make a run of it first (maskae adapt, maskae train)."
        )
    if getattr(config, "objective", "mlm") == "rtd":
        if not args.encoder_only:
            raise ConfigError(f"{args.model} was trained with objective rtd, whose replaced-token head has no stock or "
                              "fill-mask equivalent; share its encoder with --encoder-only.")
        model_class = MaskAEForReplacedTokenDetection
    model = load_checked(model_class, args.model, what="a MaskAE model", fix="pass a maskae model directory.")
    tokenizer = _tokenizer(args)
    recipe = _yaml_file(args.recipe or args.model / "recipe.yaml", required=args.recipe is not None)
    data = _data_section(recipe)
    with tempfile.TemporaryDirectory() as scratch:
        out = save_for_hub(
            model.eval(),
            args.out,
            tokenizer=tokenizer,
            metrics=_metrics(args, data),
            datasets=args.datasets if args.datasets is not None else _training_datasets(data, recipe),
            recipe=recipe,
            stock="full" if args.stock else "encoder" if args.encoder_only else None,
            base_model=args.base_model,
            repo_id=args.repo_id,
            plots=[*args.plots, *_training_curves(args.model, Path(scratch))],
        )
    print(f"wrote {out}; upload it with: maskae push {out} --repo-id ORG/NAME")
    return 0


def _data_section(recipe: dict | None) -> dict:
    """The recipe's data section; a distillation run's text is its distill.corpus (measured on a held-out share)."""
    data = dict((recipe or {}).get("data") or {})
    corpus = ((recipe or {}).get("distill") or {}).get("corpus")
    if corpus and not data.get("train"):
        data["train"] = corpus[0]
    return data


def _config(model_dir: Path) -> "PreTrainedConfig":
    """The directory's config through AutoConfig (importing export.hub registered maskae's own)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read the config in {model_dir} ({error}); pass the directory that "
                              "`maskae train` wrote.") from None


def _run_graphs(args: argparse.Namespace, backends: list[str]) -> int:
    from ..export.graphs import export_graphs

    out = export_graphs(str(args.model), args.out, backends, layer=args.layer, pooling=args.pooling or "mean",
                        normalize=args.normalize, quantize=args.quantize,
                        calibration_texts=_calibration_texts(args), tokenizer=args.tokenizer)
    print(f"wrote {', '.join(backends)} graphs to {out}; embed with: maskae embed {out} --input TEXTS --output "
          f"VECTORS.npy --backend {backends[-1]}")
    return 0


def _calibration_texts(args: argparse.Namespace) -> list[str] | None:
    """The first CALIBRATION_SIZE texts of --calibrate, read as `maskae embed` reads its input."""
    if args.calibrate is None:
        return None
    from ..data.corpus import load_corpus
    corpus = load_corpus(args.calibrate, args.text_column, streaming=True)
    texts: list[str] = []
    for batch in corpus.iter(batch_size=CALIBRATION_SIZE):
        texts.extend(batch["text"])
        if len(texts) >= CALIBRATION_SIZE:
            break
    return texts[:CALIBRATION_SIZE]


def _run_sentence_transformers(args: argparse.Namespace, backends: list[str]) -> int:
    """A trained run's card material (recipe, metrics, curves) is used when DIR has it; a Hub id has none."""
    from ..export.sentence_transformers import save_sentence_transformer

    recipe = _yaml_file(args.recipe or args.model / "recipe.yaml", required=args.recipe is not None)
    data = _data_section(recipe)
    with tempfile.TemporaryDirectory() as scratch:
        out = save_sentence_transformer(
            str(args.model),
            args.out,
            layer=args.layer,
            pooling=args.pooling or "mean",
            normalize=args.normalize,
            tokenizer=args.tokenizer,
            backends=backends,
            quantize=args.quantize,
            calibration_texts=_calibration_texts(args),
            metrics=_metrics(args, data),
            datasets=args.datasets if args.datasets is not None else _training_datasets(data, recipe),
            plots=[*args.plots, *_training_curves(args.model, Path(scratch))],
            base_model=args.base_model,
            repo_id=args.repo_id,
        )
    print(f"wrote {out}; load it with SentenceTransformer({str(out)!r}), upload it with: maskae push {out} "
          "--repo-id ORG/NAME")
    return 0


def _training_curves(run_dir: Path, scratch: Path) -> list[Path]:
    """The run's training curves as a PNG for the card, when it has a log and matplotlib is installed."""
    if not (run_dir / "log.jsonl").is_file():
        return []
    try:
        from ..training.curves import plot_training_curves
    except ImportError:
        logger.info("matplotlib is not installed, so the card gets no training curves (pip install maskae[eval])")
        return []
    path, _ = plot_training_curves([run_dir], scratch / "training_curves.png")
    return [path]


def _tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    source = args.tokenizer or (args.model if any((args.model / f).is_file() for f in TOKENIZER_FILES) else None)
    if source is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load a tokenizer from {source} ({error}); pass one with --tokenizer.") from None


def _yaml_file(path: Path, required: bool) -> dict | None:
    import yaml

    if not path.is_file():
        if required:
            raise ConfigError(f"recipe file {path} does not exist; pass the recipe.yaml that training wrote.")
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({error}); pass the recipe.yaml that training wrote.") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} does not hold a recipe mapping; pass the recipe.yaml that training wrote.")
    return values


def _metrics(args: argparse.Namespace, data: dict) -> list | None:
    from ..export.model_index import metric_records

    path = args.metrics or args.model / "eval_results.json"
    if not path.is_file():
        if args.metrics is not None:
            raise ConfigError(f"metrics file {path} does not exist; pass a JSON file of measured metrics.")
        return None
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); pass a JSON file of measured metrics.") from None
    if isinstance(values, list):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{path} holds neither a {{metric: value}} dict nor a list of metric records.")
    measured_on = data.get("validation") or data.get("train")
    if args.eval_dataset:
        where = {"dataset": args.eval_dataset}
    elif measured_on:
        split = "validation" if data.get("validation") else "held-out fraction of train"
        # A local file is named by its file name: the card must not leak this machine's paths.
        where = {"dataset": Path(measured_on).name if Path(measured_on).exists() else measured_on, "split": split}
    else:
        where = PACKAGED_EVAL
    return metric_records(values, **where)


def _training_datasets(data: dict, recipe: dict | None) -> list[str]:
    if recipe is None:
        return []
    train = data.get("train")
    if not train:
        return [PACKAGED_EVAL["dataset"]]
    return [] if Path(train).exists() else [train]
