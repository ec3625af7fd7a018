"""Training recipes: YAML files that map onto dataclasses, one source of truth for a run.

A recipe has the sections `model`, `tokenizer`, `noise`, `data`, `training`, `growth` and, for
distillation, `distill`. Every key is a
dataclass field whose `help` metadata documents it; `maskae train --help` and error messages are
generated from those fields, so the documentation cannot drift from the code. Values from YAML or
from `--set section.key=value` are coerced to the field's type; an unknown key is an error that
names the nearest valid spelling.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.noise_config import NoiseConfig
from ..errors import ConfigError


def option(default: Any = None, help: str = "", choices: tuple | None = None, factory: Any = None) -> Any:
    """A documented recipe key (`choices`, when given, are checked on load)."""
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelArgs:
    backbone: str | None = option(
        None, "stock checkpoint to split: a local directory or a Hub id; leave empty to build a model from scratch"
    )
    architecture: str = option("bert", "from scratch only: the stock model type (bert, roberta, distilbert, modernbert)")
    hidden_size: int = option(256, "from scratch only: hidden width")
    num_layers: int = option(4, "from scratch only: total layers of the stock stack (encoder + stock decoder layers)")
    num_heads: int = option(4, "from scratch only: attention heads per layer")
    intermediate_size: int = option(1024, "from scratch only: feed-forward width")
    max_position_embeddings: int = option(512, "from scratch only: longest sequence the position table covers")
    dropout: float | None = option(None, "dropout of hidden states and attention; empty keeps the family's default")
    split_layer: int | None = option(None, "encoder depth N: the code is layer N's output (default: half the stack)")
    decoder: str = option(
        "layers", "what decodes the code: the stack's remaining layers, a linear MLM head, or fresh layers",
        choices=("layers", "linear", "transformer"),
    )
    decoder_layers: int | None = option(None, "decoder='transformer' only: number of fresh decoder layers")
    decoder_init: str = option(
        "fresh", "decoder='transformer' with a backbone only: start the decoder fresh, or as a copy of the "
        "backbone's top decoder_layers layers (TSDAE)", choices=("fresh", "top_layers"),
    )
    bottleneck: str | None = option(
        None, "optional waist between encoder and decoder: per-token projection or one pooled sentence vector",
        choices=(None, "projection", "sentence"),
    )
    bottleneck_dim: int | None = option(None, "bottleneck='projection' only: width of the code")
    pooling: str = option("mean", "how the sentence bottleneck pools tokens", choices=("mean", "cls"))
    objective: str = option(
        "mlm", "what the decoder learns: mlm reconstructs the masked tokens; rtd (ELECTRA's replaced-token "
        "detection) trains a small generator to fill them and the decoder to tell, for every token, whether "
        "it was replaced", choices=("mlm", "rtd"),
    )
    generator_hidden_size: int | None = option(
        None, "objective=rtd only: width of the generator (empty: a quarter of the hidden size, at least 32)"
    )
    generator_layers: int | None = option(None, "objective=rtd only: depth of the generator (empty: the whole stack's)")
    rtd_weight: float = option(50.0, "objective=rtd only: weight of the detection loss against the generator's loss")


@dataclass
class TokenizerTrainingArgs:
    vocab_size: int = option(8000, "size of the vocabulary to learn from the training corpus")
    kind: str = option("wordpiece", "tokenizer model to learn", choices=("wordpiece", "bpe"))
    lowercase: bool = option(True, "lower-case text before tokenizing")


@dataclass
class TokenizerArgs:
    path: str | None = option(
        None, "an existing tokenizer (directory or Hub id); empty uses the backbone's own tokenizer"
    )
    train: TokenizerTrainingArgs | None = option(
        None, "learn a new tokenizer on data.train instead (give vocab_size, kind, lowercase)"
    )


@dataclass
class DataArgs:
    train: str | None = option(
        None, "training corpus: a txt/jsonl/csv/parquet file, a saved datasets dir or a Hub id; "
        "empty uses the corpus packaged with maskae (a WikiText-2 excerpt and unlabelled SST-2 / STS-B training sentences)"
    )
    validation: str | None = option(
        None, "held-out corpus for evaluation; empty uses the packaged excerpt's validation split with the "
        "packaged corpus, else the last validation_fraction of data.train"
    )
    validation_fraction: float = option(0.05, "share of data.train held out when data.validation is empty")
    text_column: str = option("text", "column that holds the text in tabular corpora")
    block_size: int = option(128, "tokens per training sequence")
    pack: bool = option(
        True, "concatenate documents into full blocks of block_size (no padding); false pads each line instead"
    )
    max_train_blocks: int | None = option(None, "use at most this many training sequences (for quick runs)")
    streaming: bool = option(
        False, "stream data.train instead of tokenizing it up front: packed on the fly, split by process, read in "
        "corpus order, resumed from the stream's saved position (for corpora larger than memory or disk); needs "
        "data.validation (or the packaged corpus) and training.num_workers 0 or 1"
    )
    max_eval_blocks: int | None = option(256, "evaluate on at most this many held-out sequences")


@dataclass
class TrainingArgs:
    output_dir: str | None = option(None, "where logs, checkpoints and the final model go (default runs/<recipe name>)")
    seed: int = option(42, "seed for initialisation, data order and noise")
    max_steps: int = option(1000, "optimizer steps to train for")
    batch_size: int = option(
        32, "global batch: sequences per optimizer step over all processes and accumulation steps"
    )
    gradient_accumulation_steps: int = option(1, "split each global batch into this many micro-batches per process")
    lr: float = option(5e-4, "peak learning rate of AdamW")
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases and norms)")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    optimizer_impl: str = option(
        "auto", "AdamW kernel: auto (fused on CUDA and CPU, foreach elsewhere), fused, foreach or for-loop",
        choices=("auto", "fused", "foreach", "for-loop"),
    )
    lr_scheduler: str = option(
        "linear", "learning-rate decay after warm-up (transformers scheduler names)",
        choices=("linear", "cosine", "constant_with_warmup", "inverse_sqrt"),
    )
    warmup_steps: int = option(0, "steps of linear learning-rate warm-up")
    max_grad_norm: float | None = option(1.0, "clip the gradient norm to this value; empty disables clipping")
    mixed_precision: str = option("no", "autocast precision passed to Accelerate; bf16 on a CPU runs only where it "
                                  "has a bf16 unit (AMX, AVX-512 BF16, ARM BF16), else fp32 with a warning",
                                  choices=("no", "bf16", "fp16"))
    sparse_prediction: bool = option(True, "project to the vocabulary only at corrupted positions (faster)")
    fused_loss: bool = option(
        True, "with sparse prediction, fuse the vocabulary projection and the loss, chunk by chunk (faster, leaner)"
    )
    layer_chunk_tokens: int | None = option(
        None, "run each layer on whole sequences about this many tokens at a time (same result; faster on a CPU, "
        "where activations then stay in cache); empty: 1024 on a CPU, unchunked on GPUs; 0: never"
    )
    compile: bool = option(False, "torch.compile each transformer layer (fixed shapes; compiles once per layer)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    num_workers: int | None = option(
        None, "DataLoader worker processes per training process that read, collate and noise batches ahead of "
        "the step; empty: 0 on a CPU (a worker would take cores from the step), 2 on an accelerator"
    )
    prefetch_factor: int = option(2, "batches each worker prepares ahead (with num_workers > 0)")
    logging_steps: int = option(10, "write a log.jsonl line every this many steps")
    eval_steps: int | None = option(None, "evaluate every this many steps; empty evaluates at the end only")
    eval_batch_size: int = option(64, "sequences per evaluation batch")
    pseudo_perplexity_blocks: int = option(
        8, "held-out sequences scored by pseudo-perplexity (one forward pass per token); 0 skips it"
    )
    save_steps: int = option(500, "write checkpoint-<step>/ every this many steps")
    save_total_limit: int | None = option(2, "keep only the newest this many checkpoints; empty keeps all")
    report_to: list[str] = option(
        None, "extra trackers through Accelerate, e.g. [tensorboard] or [trackio]", factory=list
    )
    whiten_at_end: bool | int = option(
        False, "fit a whitening of the code on the training corpus's lines after training and save it with the "
        "model (maskae.fit_whitening; embed and evaluate then apply it): true (a seeded sample of up to 10000 "
        "lines), a number (up to that many lines), or false"
    )

    def __post_init__(self) -> None:
        if not isinstance(self.whiten_at_end, bool) and (not isinstance(self.whiten_at_end, int) or self.whiten_at_end < 0):
            raise ConfigError(
                f"recipe key training.whiten_at_end is {self.whiten_at_end!r}; use true, false or a number of lines."
            )
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"training.num_workers={self.num_workers} is negative; use 0 (no workers) or more.")
        if self.prefetch_factor < 1:
            raise ConfigError(f"training.prefetch_factor={self.prefetch_factor} must be at least 1.")

    def optimizer_settings(self) -> dict:
        """The keywords of `training.optimization.build_optimizer` that these arguments set."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": (self.adam_beta1, self.adam_beta2),
                "eps": self.adam_epsilon, "impl": self.optimizer_impl}


@dataclass
class GrowthStage:
    layers: int = option(1, "encoder layers during this stage")
    share: float = option(1.0, "share of training.max_steps spent in this stage")


GROWTH_METHODS = ("stack", "append", "greedy")


@dataclass
class GrowthArgs:
    method: str = option(
        "stack", "how the encoder grows at a stage boundary: stack (copy its layers on top of themselves), "
        "append (new layers on top) or greedy (new layers on top, older layers frozen; a last stage that repeats "
        "the previous depth unfreezes everything)", choices=GROWTH_METHODS,
    )
    stages: list[GrowthStage] = option(
        None, "encoder depth schedule, e.g. [{layers: 1, share: 0.3}, {layers: 2, share: 0.7}]; the last depth "
        "must equal model.split_layer; empty trains at fixed depth", factory=list,
    )
    init: str = option(
        "random", "append and greedy: new layers start from the family's random init, or with zeroed attention "
        "and feed-forward output projections (zero_residual: the layer only re-normalises its input)",
        choices=("random", "zero_residual"),
    )
    copy_optimizer_state: bool = option(False, "stack: copied layers also copy their AdamW moments and step count")

    def __post_init__(self) -> None:
        """Checks that need only this section; the trainer checks the schedule against the model and max_steps."""
        if not self.stages:
            return
        depths = [stage.layers for stage in self.stages]
        if min(depths) < 1 or any(stage.share <= 0 for stage in self.stages):
            raise ConfigError(f"growth.stages {self._shown()} needs layers >= 1 and share > 0 in every stage.")
        if abs(sum(stage.share for stage in self.stages) - 1) > 1e-6:
            raise ConfigError(f"the shares of growth.stages {self._shown()} sum to "
                              f"{sum(stage.share for stage in self.stages):g}; make them sum to 1.")
        growing = depths[:-1] if self.method == "greedy" and len(depths) > 1 and depths[-1] == depths[-2] else depths
        if any(b <= a for a, b in zip(growing, growing[1:])):
            raise ConfigError(f"growth.stages {self._shown()} must grow in layers from stage to stage (greedy's last "
                              "stage may repeat the previous depth to unfreeze everything).")
        if self.method == "stack" and any(b > 2 * a for a, b in zip(depths, depths[1:])):
            raise ConfigError(f"growth.method=stack can at most double the encoder per stage, but growth.stages is "
                              f"{self._shown()}; add intermediate stages or use method append.")

    def _shown(self) -> str:
        return "[" + ", ".join(f"{{layers: {s.layers}, share: {s.share:g}}}" for s in self.stages) + "]"


DISTILL_LOSSES = ("cosine", "mse", "cosine+mse")


@dataclass
class DistillArgs:
    corpus: list[str] = option(
        None, "the unlabelled text the student learns from: task tsv files (their sentence columns), txt/jsonl/csv/"
        "parquet files, globs, saved datasets or Hub ids; each distinct line is one training sentence", factory=list,
    )
    teacher: str | None = option(
        None, "the frozen model whose sentence embedding the student learns (default model.backbone, the model the "
        "student starts from)"
    )
    teacher_pooling: str = option("mean", "how the teacher's last layer becomes its sentence embedding",
                                  choices=("mean", "cls"))
    pooling: str = option("mean", "how the student's code becomes a sentence embedding (embed with the same pooling)",
                          choices=("mean", "cls"))
    loss: str = option(
        "cosine+mse", "distance from the student's pooled code to the teacher's embedding: 1 - cosine, mean squared "
        "error, or their sum", choices=DISTILL_LOSSES,
    )
    similarity_weight: float = option(
        0.0, "weight of a relational term: the mean squared difference between the student's and the teacher's "
        "in-batch cosine-similarity matrices (0: off)"
    )
    matryoshka_dims: list[int] = option(
        None, "also match the first d dimensions for each d listed (nested, Matryoshka-style, e.g. [64, 128]); "
        "the losses are averaged over the full width and these", factory=list,
    )
    max_length: int = option(128, "tokens per sentence for the student and the teacher (longer sentences are cut)")
    static_init: str = option(
        "model", "model.split_layer 0 only: start the table from the model's own word embeddings, or from the "
        "teacher's embedding of each vocabulary entry alone (model2vec's distillation), so that tokens the corpus "
        "never shows still sit in the teacher's space", choices=("model", "teacher_tokens"),
    )
    train_embeddings: bool = option(
        True, "train the embedding layer too (false trains only the encoder layers; at model.split_layer 0 the "
        "embedding layer is the whole student and always trains)"
    )
    dropout: float = option(
        0.0, "dropout in the student while it distils (the target is deterministic; 0 lets K = depth start at zero "
        "loss); the saved config keeps the teacher's rates for later fine-tuning"
    )
    max_minutes: float | None = option(
        None, "stop after this many minutes of training (a step boundary; resumed runs count the earlier minutes); "
        "empty: training.max_steps alone bounds the run"
    )
    max_eval_texts: int = option(1000, "held-out sentences for the label-free signal (cosine to the teacher)")
    teacher_cache: str | None = option(
        None, "directory that caches the teacher's embeddings of the corpus, keyed by teacher, settings and text "
        "(default <output_dir>/teacher); share one between runs that distil several layers from the same text"
    )

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"distill.max_length={self.max_length} must be at least 2 (a sentence and its markers).")
        if self.similarity_weight < 0:
            raise ConfigError(f"distill.similarity_weight={self.similarity_weight} must be 0 or more.")
        if any(d < 1 for d in self.matryoshka_dims):
            raise ConfigError(f"distill.matryoshka_dims {self.matryoshka_dims} must all be at least 1.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"distill.max_minutes={self.max_minutes} must be positive, or empty.")
        if self.max_eval_texts < 1:
            raise ConfigError(f"distill.max_eval_texts={self.max_eval_texts} must be at least 1.")


ADAPT_OBJECTIVES = ("mlm", "tsdae", "distill")  # `maskae adapt --objective`: the adapt section, or the distill one


@dataclass
class AdaptArgs:
    corpus: list[str] = option(
        None, "the unlabelled text to adapt to: task tsv files (their sentence columns), txt/jsonl/csv/parquet "
        "files, globs, saved datasets or Hub ids; each distinct line is one training sentence", factory=list,
    )
    head_warmup_steps: int = option(
        100, "first steps in which only the parts the checkpoint lacks train (a fresh MLM head, a fresh decoder), "
        "the pretrained weights frozen; then everything trains"
    )
    head_lr: float = option(
        5.0e-4, "learning rate of the parts the checkpoint lacks (the pretrained weights take training.lr)"
    )
    anchor_weight: float = option(
        1.0, "weight of the anchor against forgetting: 1 - cosine between the pooled code and the frozen "
        "original's on the same input, per sentence (0: off)"
    )
    l2_weight: float = option(
        0.0, "weight of the squared distance of the encoder's weights from their starting values, summed (L2-SP; "
        "0: off)"
    )
    freeze_embeddings: bool = option(False, "keep the embedding layer frozen")
    freeze_layers: int = option(0, "keep the lowest N encoder layers frozen (with the embeddings, lower layers hold "
                                   "most of what transfers)")
    pooling: str = option("mean", "how the code becomes a sentence embedding for the anchor and the label-free "
                          "signal (embed with the same pooling)", choices=("mean", "cls"))
    min_original_cosine: float = option(
        0.9, "the kept model is the evaluation with the lowest held-out reconstruction loss among those whose "
        "embeddings keep at least this mean cosine to the original's (step 0 always qualifies)"
    )
    max_minutes: float | None = option(
        None, "stop after this many minutes of training (a step boundary); empty: training.max_steps bounds the run"
    )
    max_eval_texts: int = option(1000, "held-out sentences for the label-free signal")

    def __post_init__(self) -> None:
        for key in ("head_warmup_steps", "freeze_layers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"adapt.{key}={getattr(self, key)} must be 0 or more.")
        for key in ("anchor_weight", "l2_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"adapt.{key}={getattr(self, key)} must be 0 or more (0 turns it off).")
        if self.head_lr <= 0:
            raise ConfigError(f"adapt.head_lr={self.head_lr} must be positive, e.g. 5e-4.")
        if not -1 <= self.min_original_cosine <= 1:
            raise ConfigError(f"adapt.min_original_cosine={self.min_original_cosine} must lie in [-1, 1].")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"adapt.max_minutes={self.max_minutes} must be positive, or empty.")
        if self.max_eval_texts < 2:
            raise ConfigError(f"adapt.max_eval_texts={self.max_eval_texts} must be at least 2.")


@dataclass
class Recipe:
    model: ModelArgs = option(None, "what to train", factory=ModelArgs)
    tokenizer: TokenizerArgs = option(None, "which tokenizer", factory=TokenizerArgs)
    noise: NoiseConfig = option(None, "how the input is corrupted", factory=NoiseConfig)
    data: DataArgs = option(None, "what to train and evaluate on", factory=DataArgs)
    training: TrainingArgs = option(None, "how to train", factory=TrainingArgs)
    growth: GrowthArgs = option(None, "optional progressive or layer-wise growth of the encoder", factory=GrowthArgs)
    distill: DistillArgs | None = option(
        None, "optional: distil the teacher's sentence embedding into the first model.split_layer layers instead of "
        "denoising (what `maskae adapt --objective distill` runs)"
    )
    adapt: AdaptArgs | None = option(
        None, "optional: continue denoising an existing encoder on the user's unlabelled text, with an anchor "
        "against forgetting and a label-free choice of the kept step (what `maskae adapt --objective mlm|tsdae` runs)"
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved recipe (every key, defaults included) as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (from YAML or a --set string) as type `tp`, or a ConfigError naming `key`."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "null", "none", "~")):
        if optional:
            return None
        raise ConfigError(f"recipe key {key} cannot be empty; give it a value.")
    if set(typing.get_args(inner)) == {bool, int}:  # a switch that may also carry a count: true | false | N
        if isinstance(value, bool):
            return value
        try:
            return _coerce(value, int, key)
        except ConfigError:
            return _coerce(value, bool, key)
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"recipe key {key} must be a mapping of its own keys, not {value!r}.")
        return _build(inner, value, key)
    try:
        if inner is bool:
            if isinstance(value, str):
                if value.strip().lower() in ("true", "yes", "on", "1"):
                    return True
                if value.strip().lower() in ("false", "no", "off", "0"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            if isinstance(value, bool):  # YAML 1.1 reads a bare `no` (e.g. mixed_precision: no) as false
                return "yes" if value else "no"
            return str(value)
        if typing.get_origin(inner) is list:
            (item,) = typing.get_args(inner)
            if isinstance(value, str):
                parsed = yaml.safe_load(value)
                value = parsed if isinstance(parsed, list) else [v for v in value.split(",") if v.strip()]
            return [_coerce(v, item, key) for v in value]
    except ConfigError:
        raise  # from a nested section (e.g. one growth stage): already names its key
    except (TypeError, ValueError):
        kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        kind = kinds.get(inner, "a list" if typing.get_origin(inner) is list else str(inner))
        raise ConfigError(f"recipe key {key} must be {kind}, got {value!r}; fix its value.") from None
    return value


def _build(cls: type, values: dict, prefix: str) -> Any:
    """A `cls` instance from a (possibly partial) mapping, checking keys, types and choices."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(_unknown_key_message(key, cls, prefix))
        kwargs[name] = _coerce(value, hints[name], key)
        choices = fields[name].metadata.get("choices")
        if choices and kwargs[name] not in choices:
            shown = ", ".join("null" if c is None else str(c) for c in choices)
            raise ConfigError(f"recipe key {key} is {kwargs[name]!r}; use one of {shown}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"recipe section {prefix or 'root'} is invalid ({error}); fix its keys.") from None


def _docstring_help(cls: type) -> dict[str, str]:
    """Field docs from a `name: text` (or `a / b: text`) docstring, for dataclasses without help metadata."""
    docs, names = {}, []
    for line in (cls.__doc__ or "").splitlines():
        match = re.match(r"^\s*([a-z_]+(?:\s*/\s*[a-z_]+)*):\s*(.*)$", line)
        if match:
            names = [n.strip() for n in match.group(1).split("/")]
            for name in names:
                docs[name] = match.group(2).strip()
        elif names and line.strip():
            for name in names:
                docs[name] += " " + line.strip()
        else:
            names = []
    return docs


def all_keys(cls: type = Recipe, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every leaf key of a recipe, in declaration order."""
    keys = []
    hints = _hints(cls)
    docstring = _docstring_help(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        inner, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(inner):
            keys.extend(all_keys(inner, key + "."))
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            keys.append((key, default, f.metadata.get("help") or docstring.get(f.name, "")))
    return keys


def _unknown_key_message(key: str, cls: type, prefix: str) -> str:
    valid = [k for k, _, _ in all_keys()] + [f"{prefix}.{f.name}" if prefix else f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else "see `maskae train --help` for every key."
    shown = key if key.isprintable() else repr(key)  # a key with a line break must not break the one-line error
    return f"unknown recipe key {shown}; {hint}"


def apply_override(values: dict, assignment: str) -> None:
    """Apply one `section.key=value` override to a raw recipe mapping (the value is parsed as YAML)."""
    dotted, sep, raw = assignment.partition("=")
    if not sep or not dotted.strip():
        raise ConfigError(f"--set {assignment!r} is not of the form section.key=value, e.g. --set training.lr=3e-4.")
    parts = dotted.strip().split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def recipe_from_dict(values: dict | None) -> Recipe:
    """A validated Recipe from a raw mapping (missing keys take their defaults)."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError("a recipe must be a YAML mapping with the sections model, tokenizer, noise, data, training.")
    recipe = _build(Recipe, values, "")
    validate(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML file, apply `--set` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist; pass the path of a YAML recipe, e.g. recipes/tiny-wikitext2.yaml.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"recipe file {path} is not UTF-8 text; pass a YAML recipe saved as UTF-8.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe file {path} is not valid YAML ({error}); fix its syntax.") from None
    for assignment in overrides or []:
        apply_override(values, assignment)
    return recipe_from_dict(values)


def validate(recipe: Recipe) -> None:
    """Checks that span several keys or need a range; single-key types and choices are checked on load."""
    model, data, training = recipe.model, recipe.data, recipe.training
    positive = {
        "training.max_steps": training.max_steps,
        "training.batch_size": training.batch_size,
        "training.gradient_accumulation_steps": training.gradient_accumulation_steps,
        "training.logging_steps": training.logging_steps,
        "training.save_steps": training.save_steps,
        "training.eval_batch_size": training.eval_batch_size,
        "data.block_size": data.block_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"recipe key {key} is {value}; it must be at least 1.")
    for key, value in {"training.eval_steps": training.eval_steps, "training.save_total_limit": training.save_total_limit}.items():
        if value is not None and value < 1:
            raise ConfigError(f"recipe key {key} is {value}; it must be at least 1, or empty.")
    if training.lr <= 0:
        raise ConfigError(f"recipe key training.lr is {training.lr}; it must be positive, e.g. 5e-4.")
    if training.warmup_steps < 0:
        raise ConfigError(f"recipe key training.warmup_steps is {training.warmup_steps}; it must be 0 or more.")
    if not 0 < data.validation_fraction < 1:
        raise ConfigError(f"recipe key data.validation_fraction is {data.validation_fraction}; choose a value in (0, 1).")
    if model.backbone is None and data.block_size > model.max_position_embeddings:
        raise ConfigError(
            f"data.block_size ({data.block_size}) exceeds model.max_position_embeddings "
            f"({model.max_position_embeddings}); lower the block size or raise the position table."
        )
    if model.objective == "rtd" and recipe.growth.stages:
        raise ConfigError("growth.stages cannot grow a model.objective=rtd model (its generator is sized from the "
                          "whole stack); leave growth.stages empty or use objective mlm.")
    if recipe.distill is not None:
        validate_distillation(recipe)
    if recipe.adapt is not None:
        validate_adaptation(recipe)
    if model.backbone is None and recipe.tokenizer.path is None and recipe.tokenizer.train is None:
        raise ConfigError(
            "a from-scratch model needs a tokenizer: set tokenizer.path, or tokenizer.train (e.g. "
            "--set tokenizer.train.vocab_size=8000)."
        )


def validate_distillation(recipe: Recipe) -> None:
    """A distillation recipe starts from a stock checkpoint, keeps its remaining layers as the decoder, and
    has text to learn from."""
    model, distill = recipe.model, recipe.distill
    if model.backbone is None:
        raise ConfigError("distillation starts from an existing encoder; set model.backbone (the MODEL of maskae adapt).")
    if model.split_layer is None:
        raise ConfigError("distillation needs the student's depth; set model.split_layer (maskae adapt --layer K).")
    if model.decoder != "layers" or model.bottleneck is not None or model.objective != "mlm" or recipe.growth.stages:
        raise ConfigError("distillation keeps the teacher's remaining layers as the decoder; leave model.decoder=layers, "
                          "model.bottleneck and growth.stages empty, and model.objective=mlm.")
    if not distill.corpus:
        raise ConfigError("distillation needs unlabelled text; give distill.corpus (maskae adapt --corpus PATH).")


def validate_adaptation(recipe: Recipe) -> None:
    """An adaptation recipe starts from a stock checkpoint, reconstructs masked tokens, and has text to adapt to."""
    model, adapt = recipe.model, recipe.adapt
    if recipe.distill is not None:
        raise ConfigError("a recipe adapts by denoising (adapt) or by distillation (distill), not both; remove one section.")
    if model.backbone is None:
        raise ConfigError("adaptation starts from an existing encoder; set model.backbone (the MODEL of maskae adapt).")
    if model.objective != "mlm" or recipe.growth.stages:
        raise ConfigError("adaptation reconstructs masked tokens at a fixed depth; set model.objective=mlm and leave "
                          "growth.stages empty.")
    if not adapt.corpus:
        raise ConfigError("adaptation needs unlabelled text; give adapt.corpus (maskae adapt --corpus PATH).")
    if recipe.data.streaming:
        raise ConfigError("adaptation reads its sentences up front; set data.streaming=false.")


def format_keys() -> str:
    """Every recipe key with its default and documentation, for `maskae train --help`."""
    lines = []
    section = None
    for key, default, help_text in all_keys():
        head = key.split(".")[0]
        if head != section:
            section = head
            lines.append(f"{head}:")
        shown = "null" if default is None else default
        lines.append(f"  {key} (default {shown}): {help_text}")
    return "\n".join(lines)
