"""What a recipe builds before the first step: the tokenizer, the model (split from a stock checkpoint or
from scratch), the text and its token sequences, and the trackers. Each is a function of the recipe, so
the loop in `trainer` stays a reading of Accelerate's examples."""

from __future__ import annotations

import itertools
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, is_trackio_available
from datasets import Dataset
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..auto_registration import register_auto_classes
from ..configuration_maskae import MaskAEConfig, num_layers
from ..data import corpus
from ..errors import ConfigError, DataError, TokenizerError
from ..modeling_maskae import MaskAEForMaskedLM, MaskAEForReplacedTokenDetection
from .recipe import Recipe

register_auto_classes()  # maskae checkpoints load through the Auto classes and save with their auto_map

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "embedding_dropout", "mlp_dropout")


def train_source(recipe: Recipe) -> str:
    """The training corpus: data.train, or the pretraining corpus packaged with maskae (WikiText-2 excerpt
    and unlabelled task sentences)."""
    return str(recipe.data.train if recipe.data.train is not None else corpus.default_corpus("pretraining"))


def build_tokenizer(recipe: Recipe, output_dir: Path, accelerator: Accelerator) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer: an existing one, the backbone's, or one learned on the training corpus
    (learned once by the main process and stored in <output_dir>/tokenizer, which a resume reuses)."""
    args = recipe.tokenizer
    if args.path is not None or args.train is None:
        source = args.path or recipe.model.backbone
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise TokenizerError(f"cannot load a tokenizer from {source!r} ({error}); set tokenizer.path to a "
                                 "tokenizer directory or Hub id.") from None
    from ..data.tokenization import train_tokenizer

    saved = output_dir / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer.json").is_file():
        train_tokenizer(train_source(recipe), vocab_size=args.train.vocab_size, out_dir=saved, kind=args.train.kind,
                        lowercase=args.train.lowercase, text_column=recipe.data.text_column)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(saved)


def build_model(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> MaskAEForMaskedLM | MaskAEForReplacedTokenDetection:
    """A MaskAE model split from a stock checkpoint, or built from scratch at the recipe's size; its class
    follows model.objective."""
    args = recipe.model
    model_class = MaskAEForReplacedTokenDetection if args.objective == "rtd" else MaskAEForMaskedLM
    extra = {"sparse_prediction": recipe.training.sparse_prediction, "fused_loss": recipe.training.fused_loss,
             "layer_chunk_tokens": recipe.training.layer_chunk_tokens, "objective": args.objective}
    if args.objective == "rtd":
        extra.update(generator_hidden_size=args.generator_hidden_size, generator_layers=args.generator_layers,
                     rtd_weight=args.rtd_weight)
    if recipe.noise.decoder_mask_prob is not None:
        extra["decoder_mask_prob"] = recipe.noise.decoder_mask_prob
    split = dict(decoder=args.decoder, decoder_layers=args.decoder_layers, bottleneck=args.bottleneck,
                 bottleneck_dim=args.bottleneck_dim, pooling=args.pooling)
    if args.backbone is not None:
        split_layer = args.split_layer
        if split_layer is None:
            total = num_layers(AutoConfig.from_pretrained(args.backbone))
            split_layer = total if args.decoder == "linear" else total // 2
        model = model_class.from_backbone(args.backbone, split_layer, **split, decoder_init=args.decoder_init, **extra)
        if len(tokenizer) > model.config.vocab_size:
            raise TokenizerError(
                f"the tokenizer has {len(tokenizer)} tokens but backbone {args.backbone!r} has only "
                f"{model.config.vocab_size} embeddings; leave tokenizer.path empty to use the backbone's own tokenizer."
            )
    else:
        try:
            stock = AutoConfig.for_model(
                args.architecture, vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
                intermediate_size=args.intermediate_size, max_position_embeddings=args.max_position_embeddings,
                pad_token_id=tokenizer.pad_token_id,
            )
        except ValueError as error:
            raise ConfigError(f"model.architecture={args.architecture!r} is not a known model type ({error}); "
                              "use e.g. bert, roberta or modernbert.") from None
        model = model_class(MaskAEConfig(base_config=stock, split_layer=args.split_layer, **split, **extra))
    if args.dropout is not None:
        set_dropout(model, args.dropout)
    return model


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout module's rate, and the stock config's rates so the saved model agrees."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    for key in DROPOUT_KEYS:
        if isinstance(getattr(model.config.base_config, key, None), float):
            setattr(model.config.base_config, key, p)


def load_texts(recipe: Recipe) -> tuple[Dataset | None, Dataset]:
    """(train, held-out) raw text datasets, as the recipe's data section describes; no training texts when
    streaming (the stream reads them)."""
    args = recipe.data
    train = None if args.streaming else corpus.load_corpus(train_source(recipe), text_column=args.text_column)
    if args.validation is not None:
        return train, corpus.load_corpus(args.validation, text_column=args.text_column)
    if args.train is None:
        return train, corpus.load_corpus(str(corpus.default_corpus("validation")), text_column=args.text_column)
    if train is None:
        raise ConfigError("data.streaming cannot hold out a share of a stream; give a held-out corpus as "
                          "data.validation.")
    if round(len(train) * args.validation_fraction) < 1 or len(train) < 2:
        raise DataError(
            f"{args.train} has {len(train)} non-blank line(s), too few to hold out data.validation_fraction="
            f"{args.validation_fraction} of them; give more text, or a held-out corpus as data.validation."
        )
    parts = train.train_test_split(test_size=args.validation_fraction, shuffle=False)
    return parts["train"], parts["test"]


def whitening_texts(recipe: Recipe, max_texts: int, seed: int) -> list[str]:
    """Training lines to fit the final whitening on: a seeded sample of the corpus, or, when streaming, its
    first `max_texts` lines (a sample would read the whole stream)."""
    if recipe.data.streaming:
        rows = corpus.load_corpus(train_source(recipe), text_column=recipe.data.text_column, streaming=True)
        return [row["text"] for row in itertools.islice(rows, max_texts)]
    return corpus.sample_texts(load_texts(recipe)[0]["text"], max_texts, seed=seed)


def tokenize(recipe: Recipe, texts: Dataset, tokenizer: PreTrainedTokenizerBase, limit: int | None) -> Dataset:
    """Token-id sequences: packed blocks of block_size, or one truncated sequence per line."""
    args = recipe.data
    if args.pack:
        sequences = corpus.tokenize_and_pack(texts, tokenizer, args.block_size)
    else:
        # load_corpus yields one `text` column of non-blank rows
        sequences = texts.map(
            lambda rows: {"input_ids": tokenizer(rows["text"], truncation=True, max_length=args.block_size)["input_ids"]},
            batched=True, remove_columns=texts.column_names,
        )
    if limit is not None:
        sequences = sequences.select(range(min(limit, len(sequences))))
    return sequences.select_columns(["input_ids"])


def init_trackers(accelerator: Accelerator, recipe: Recipe) -> None:
    """Start the trackers the recipe names (TensorBoard, trackio) through Accelerate."""
    available = {"tensorboard": is_tensorboard_available, "trackio": is_trackio_available}
    for name in recipe.training.report_to:
        if name not in available:
            raise ConfigError(f"training.report_to names {name!r}; use tensorboard or trackio.")
        if not available[name]():
            raise ConfigError(f"training.report_to asks for {name}, which is not installed; pip install {name}, or drop it.")
    if recipe.training.report_to:
        flat = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                for key, value in _flatten(recipe.to_dict()).items()}
        accelerator.init_trackers("maskae", config=flat)


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
