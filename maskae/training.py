"""The training loop: a recipe in, a trained MaskAE model, logs, checkpoints and an evaluation out.

It follows Accelerate's examples (prepare, loop, evaluate, save) with these deliberate choices:

* `training.batch_size` is the *global* batch, and which sequences it holds at each step is a function
  of (seed, step) alone (see `batching`). Each process reads and noises only its own rows, in
  DataLoader workers ahead of the step, and a row's noise depends only on (seed, epoch, its index)
  (`noise.KeyedRandom`). The loss is the exact token-level mean over the global batch (each rank scales
  its sum by the global target count), so one process and N processes, with or without gradient
  accumulation, train the same model up to float rounding, and a checkpoint written by N processes
  resumes on M.
* The data position is the step (map-style data) or the stream's state after the last batch trained
  on (`data.streaming`), both saved in the checkpoint; with RNG states restored too, resuming is
  bit-exact.
* Checkpoints are written to `checkpoint-<step>.tmp/`, marked complete, then renamed; a resume only
  considers renamed, marked directories, so a run killed mid-write never picks up a partial one. The
  marker records every file's size and SHA-256, so a resume also passes over a checkpoint damaged
  later (a full disk, a lost node, bit rot) and continues from the newest intact one.
* One run per output directory: `pretraining.train` holds a lock file there (see `run_lock`).

`Trainer` keeps each phase in its own method so that later features (e.g. growing the encoder at
stage boundaries) can hook in at step boundaries by overriding `on_step_end`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import (
    ProjectConfiguration,
    extract_model_from_parallel,
    gather_object,
    is_tensorboard_available,
    is_trackio_available,
    set_seed,
)
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase, get_scheduler

from . import data as corpus
from .batching import StepBatchSampler, TaggedRows
from .collator import DataCollatorForDenoising
from .configuration_maskae import MaskAEConfig, num_layers
from .console import Progress, write
from .embeddings import Embedder
from .errors import CheckpointError, ConfigError, DataError, MaskAEError, StorageError, TokenizerError, cause
from .integrity import damage, directory_records, file_record
from .mlm_metrics import masked_lm_metrics, pseudo_perplexity
from .modeling_maskae import MaskAEForMaskedLM, MaskAEForReplacedTokenDetection
from .noise import IGNORE_INDEX
from .recipe import Recipe
from .run_logs import read_log
from .streaming import PackedBatchStream
from .whitening import DEFAULT_MAX_TEXTS, fit_whitening

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
LOCK_FILE = "maskae.lock"
DAMAGED_SUFFIX = ".damaged"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "embedding_dropout", "mlp_dropout")
EVAL_NOISE_SEED_OFFSET = 1  # eval noise is drawn from seed + 1: fixed for the whole run, apart from training's


class TrainingDivergedError(MaskAEError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StreamCollator:
    """Collates a stream's item (one process's rows of a global batch) and passes its stream position on."""

    def __init__(self, collator: DataCollatorForDenoising) -> None:
        self.collator = collator

    def __call__(self, item: dict) -> dict:
        return {**self.collator(item["rows"]), "stream_state": item["state"]}


class TrainState:
    """What Accelerate does not checkpoint by itself: the optimizer-step counter (the log position and,
    for map-style data, the data position follow from it) and, when streaming, every process's stream
    position (Accelerate saves this object from the main process only, so the positions are gathered first)."""

    def __init__(self) -> None:
        self.step = 0
        self.stream: dict | None = None  # this process's stream position after the last step
        self.streams: list[dict] | None = None  # every process's, gathered for a checkpoint

    def state_dict(self) -> dict:
        return {"step": self.step, "streams": self.streams}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.streams = state.get("streams")


# ---------------------------------------------------------------- checkpoints on disk


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished `checkpoint-<step>/` directories, oldest first (`*.tmp` and unmarked ones are ignored)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def remove_checkpoint(path: Path) -> None:
    """Unmark first, so a deletion cut short leaves a directory that is never resumed from."""
    (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with a complete checkpoint's files, or None when they match its marker's records
    (a marker without records, from before maskae wrote them, is trusted as it is)."""
    try:
        records = json.loads((path / COMPLETE_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return f"its {COMPLETE_MARKER} is unreadable"
    return None if records is None else damage(path, records)


def drop_tied_copies(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
    """A `save_state` pre-hook: leave each tied copy (the MLM decoder, which is the word embeddings) out of
    the checkpoint, as `save_pretrained` does; `load_state` ties it again. Accelerate would otherwise drop
    the same tensors itself, with a "Removed shared tensor" warning on every checkpoint."""
    for model, state in zip(models, weights):
        tied = getattr(extract_model_from_parallel(model), "all_tied_weights_keys", None) or {}
        prefix = "module." if any(key.startswith("module.") for key in state) else ""  # DistributedDataParallel's
        for target, source in tied.items():
            copy, original = state.get(prefix + target), state.get(prefix + source)
            if copy is not None and original is not None and copy.data_ptr() == original.data_ptr():
                del state[prefix + target]


# ---------------------------------------------------------------- building blocks


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
    from .tokenization import train_tokenizer

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
        model = model_class.from_backbone(args.backbone, split_layer, **split, **extra)
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


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and norms; the fastest kernel for the device by default."""
    args = recipe.training
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    impl = args.optimizer_impl
    if impl == "auto":
        impl = "fused" if device.type in ("cuda", "cpu") else "foreach"  # fused AdamW: ~3x faster on CPU too
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, **kernel)


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


# ---------------------------------------------------------------- the loop


class Trainer:
    """prepare -> train (steps, logging, evaluation, checkpoints) -> save the final model."""

    def __init__(self, recipe: Recipe, output_dir: str | Path, resume: bool = False) -> None:
        self.recipe, self.args = recipe, recipe.training
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.state = TrainState()

    # ---- setup

    def prepare(self) -> None:
        args = self.args
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=args.report_to or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir)),
            step_scheduler_with_optimizer=False,  # one scheduler step per real optimizer step, any process count
        )
        accelerator = self.accelerator
        if not self.resume and accelerator.is_main_process and complete_checkpoints(self.output_dir):
            raise CheckpointError(f"{self.output_dir} already holds checkpoints; pass --resume to continue that run, "
                                  "or choose another --output-dir.")
        shards = accelerator.num_processes * args.gradient_accumulation_steps
        if args.batch_size % shards:
            raise ConfigError(
                f"training.batch_size={args.batch_size} cannot be split over {accelerator.num_processes} processes x "
                f"{args.gradient_accumulation_steps} accumulation steps; make it a multiple of {shards}."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        set_seed(args.seed)

        train_text, eval_text = load_texts(self.recipe)
        self.tokenizer = build_tokenizer(self.recipe, self.output_dir, accelerator)
        with accelerator.main_process_first():
            if train_text is not None:
                self.train_set = tokenize(self.recipe, train_text, self.tokenizer, self.recipe.data.max_train_blocks)
            self.eval_set = tokenize(self.recipe, eval_text, self.tokenizer, self.recipe.data.max_eval_blocks)
        if self.recipe.data.streaming:
            self.check_streaming()
        elif len(self.train_set) // args.batch_size == 0:
            raise DataError(f"the training set has {len(self.train_set)} sequences, fewer than one global batch "
                            f"(training.batch_size={args.batch_size}); lower the batch size or give more data.")
        if len(self.eval_set) == 0:
            raise DataError("the held-out set is empty after tokenization; set data.validation to a larger corpus.")
        self.collator = DataCollatorForDenoising(self.tokenizer, noise=self.recipe.noise, seed=args.seed)
        self.eval_batches = self._noised_eval_batches()

        model = self.initial_model()
        if args.compile:
            model.compile_layers()
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = build_optimizer(model, self.recipe, accelerator.device)
        scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps,
                                  num_training_steps=args.max_steps)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        accelerator.register_save_state_pre_hook(drop_tied_copies)
        accelerator.register_for_checkpointing(self.state)
        init_trackers(accelerator, self.recipe)
        if self.resume:
            self._resume()

    def initial_model(self) -> MaskAEForMaskedLM:
        """The model that training starts from; override to change its starting shape (growth starts shallow)."""
        return build_model(self.recipe, self.tokenizer)

    def _noised_eval_batches(self) -> list[dict[str, torch.Tensor]]:
        """The held-out set noised once with a fixed seed, so every evaluation scores the same targets."""
        collator = DataCollatorForDenoising(self.tokenizer, noise=self.recipe.noise,
                                            seed=self.args.seed + EVAL_NOISE_SEED_OFFSET)
        size = self.args.eval_batch_size
        rows = [self.eval_set[i] for i in range(len(self.eval_set))]
        return [collator(rows[start : start + size]) for start in range(0, len(rows), size)]

    def _resume(self) -> None:
        checkpoint = self._intact_checkpoint()
        if checkpoint is None:
            logger.info("no complete checkpoint in %s; starting from scratch", self.output_dir)
            return
        self.prepare_to_load(checkpoint)
        try:
            self.accelerator.load_state(str(checkpoint))
        except Exception as error:  # safetensors, torch.load and pickle each raise their own types
            raise CheckpointError(f"cannot load {checkpoint} ({cause(error)}); move it away to resume from the one "
                                  "before it, or rerun without --resume into a new --output-dir.") from None
        if self.recipe.data.streaming:
            self._restore_stream_position(checkpoint)
        logger.info("resumed from %s at step %d", checkpoint, self.state.step)
        if self.accelerator.is_main_process:
            for name in ("log.jsonl", "eval_log.jsonl"):
                self._truncate_log(self.output_dir / name, self.state.step)

    def _restore_stream_position(self, checkpoint: Path) -> None:
        """This process's stream position from the checkpoint; a stream split over P processes resumes on P."""
        streams, processes = self.state.streams, self.accelerator.num_processes
        if not streams:
            raise CheckpointError(f"{checkpoint} was written by a run that did not stream its corpus; resume it with "
                                  "data.streaming=false, or restart without --resume.")
        if len(streams) != processes:
            raise CheckpointError(
                f"{checkpoint} streams its corpus split over {len(streams)} process(es), not {processes}; resume it "
                f"with {len(streams)} (accelerate launch --num_processes {len(streams)}), or restart without --resume."
            )
        self.state.stream = streams[self.accelerator.process_index]

    def _intact_checkpoint(self) -> Path | None:
        """The newest complete checkpoint whose files match their records; damaged newer ones are set
        aside as `<name>.damaged` with a warning. None when there is no complete checkpoint at all."""
        intact, damaged = None, []
        for checkpoint in reversed(complete_checkpoints(self.output_dir)):
            problem = checkpoint_damage(checkpoint)
            if problem is None:
                intact = checkpoint
                break
            damaged.append((checkpoint, problem))
        if intact is None and damaged:
            newest, problem = damaged[0]
            raise CheckpointError(
                f"no checkpoint in {self.output_dir} is intact (the newest, {newest.name}: {problem}); move them "
                "away and rerun without --resume to start over."
            )
        self.accelerator.wait_for_everyone()  # every process has verified before any damaged one moves
        for bad, problem in damaged:
            aside = bad.with_name(bad.name + DAMAGED_SUFFIX)
            logger.warning("checkpoint %s is damaged (%s), so this run resumes from %s and keeps the damaged one "
                           "as %s.", bad, problem, intact.name, aside.name)
            if self.accelerator.is_main_process:
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(bad, aside)
        return intact

    def prepare_to_load(self, checkpoint: Path) -> None:
        """Shape the model like `checkpoint` before its states load; override where shapes change (growth)."""

    @staticmethod
    def _truncate_log(path: Path, step: int) -> None:
        """Drop log lines written after the checkpoint (the resumed run writes them again)."""
        if path.is_file():
            path.write_text("".join(json.dumps(record) + "\n" for record in read_log(path) if record["step"] <= step))

    # ---- data

    def check_streaming(self) -> None:
        """The settings a stream cannot honour, each refused in one sentence before any step."""
        args = self.recipe.data
        if not args.pack:
            raise ConfigError("data.streaming packs the stream into blocks; set data.pack=true.")
        if args.max_train_blocks is not None:
            raise ConfigError("data.max_train_blocks counts a tokenized corpus, which a stream is not; leave it "
                              "empty and bound the run with training.max_steps.")
        if self.num_workers() > 1:
            raise ConfigError(
                f"training.num_workers={self.num_workers()}: a stream is read by one worker per process, so that "
                "its position can be saved exactly; set it to 1 (or 0)."
            )

    def num_workers(self) -> int:
        """training.num_workers, or by default none on a CPU (a worker would take cores from the step) and 2
        per process on an accelerator."""
        if self.args.num_workers is not None:
            return self.args.num_workers
        return 0 if self.accelerator.device.type == "cpu" else 2

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This process's rows of each global batch from the current step on, collated and noised in
        `num_workers` DataLoader workers ahead of the step."""
        accelerator, args = self.accelerator, self.args
        workers = self.num_workers()
        if self.recipe.data.streaming:
            return self.stream_batches(workers)
        sampler = StepBatchSampler(len(self.train_set), args.batch_size, args.seed, accelerator.process_index,
                                   accelerator.num_processes, start_step=self.state.step)
        # The loader's own generator seeds its workers, which would otherwise draw from the global RNG
        # (and shift dropout after a resume).
        loader = DataLoader(TaggedRows(self.train_set), batch_sampler=sampler, collate_fn=self.collator,
                            num_workers=workers, prefetch_factor=args.prefetch_factor if workers else None,
                            pin_memory=accelerator.device.type == "cuda",
                            generator=torch.Generator().manual_seed(args.seed))
        return iter(loader)

    def stream_batches(self, workers: int) -> Iterator[dict[str, torch.Tensor]]:
        """`batches` from a stream, continued from the saved stream position; each batch carries the
        stream's position after it (`stream_state`), which the loop records once the step is done."""
        accelerator, data = self.accelerator, self.recipe.data
        stream = PackedBatchStream(
            train_source(self.recipe), self.tokenizer, data.block_size, self.args.batch_size // accelerator.num_processes,
            text_column=data.text_column, rank=accelerator.process_index, world_size=accelerator.num_processes,
        )
        if self.state.stream is not None:
            stream.load_state_dict(self.state.stream)
        loader = DataLoader(stream, batch_size=None, collate_fn=StreamCollator(self.collator), num_workers=workers,
                            prefetch_factor=self.args.prefetch_factor if workers else None,
                            pin_memory=accelerator.device.type == "cuda")
        return iter(loader)

    def micro_batches(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """This process's batch split into accumulation micro-batches, on device."""
        rows = self.args.batch_size // self.accelerator.num_processes
        size = rows // self.args.gradient_accumulation_steps
        device = self.accelerator.device
        return [{key: value[i : i + size].to(device, non_blocking=True) for key, value in batch.items()}
                for i in range(0, rows, size)]

    # ---- steps

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float | None]:
        """One optimizer step on this process's rows of a global batch; returns the global batch's mean loss
        over its targets, the gradient norm before clipping, and the global numbers of targets and tokens."""
        accelerator, model = self.accelerator, self.model
        local = torch.stack([(batch["labels"] != IGNORE_INDEX).sum(), batch["attention_mask"].sum()])
        num_targets, num_tokens = (int(n) for n in accelerator.reduce(local.to(accelerator.device), reduction="sum"))
        # Each rank's summed loss over the global target count; Accelerate divides by the accumulation
        # steps and DDP averages over ranks, hence the factor: the gradient is that of the global mean.
        scale = accelerator.num_processes * self.args.gradient_accumulation_steps / max(num_targets, 1)
        loss_sum = torch.zeros((), device=accelerator.device)
        grad_norm = None
        for micro in self.micro_batches(batch):
            with accelerator.accumulate(model):
                # The model's loss is the mean over this micro-batch's targets (0 when it has none).
                summed = model(**micro).loss * max(int((micro["labels"] != IGNORE_INDEX).sum()), 1)
                accelerator.backward(summed * scale)
                loss_sum += summed.detach()
                if accelerator.sync_gradients and self.args.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        loss = accelerator.reduce(loss_sum, reduction="sum").item() / max(num_targets, 1)
        return {"loss": loss, "grad_norm": None if grad_norm is None else float(grad_norm), "targets": num_targets,
                "tokens": num_tokens}

    def evaluate(self) -> dict[str, float]:
        """Masked accuracy, masked loss, perplexity and pseudo-perplexity on the held-out set."""
        results = masked_lm_metrics(self.model, self.eval_batches)
        blocks = self.args.pseudo_perplexity_blocks
        if blocks:
            rows = [self.eval_set[i] for i in range(min(blocks, len(self.eval_set)))]
            padded = self.tokenizer.pad(rows, return_tensors="pt")
            results.update(pseudo_perplexity(self.model, padded["input_ids"], padded["attention_mask"],
                                             self.tokenizer.mask_token_id, self.tokenizer.all_special_ids,
                                             batch_size=self.args.eval_batch_size))
        return results

    # ---- the loop

    def train(self) -> dict[str, float]:
        """Train to `max_steps` (from the resumed step), then evaluate and save the final model."""
        self.prepare()
        accelerator, args = self.accelerator, self.args
        started = time.perf_counter()
        self.clock_start = started - self._logged_seconds()  # a resumed run continues the logs' clock
        self.model.train()
        window_tokens, window_start, window_wait, trained_tokens = 0, time.perf_counter(), 0.0, 0
        batches = self.batches()
        # Closed on the way out of an error too, so that the error is printed on a line of its own.
        with Progress(args.max_steps, initial=self.state.step, enabled=accelerator.is_local_main_process) as progress:
            while self.state.step < args.max_steps:
                waited = time.perf_counter()
                batch = next(batches)
                window_wait += time.perf_counter() - waited
                stream_state = batch.pop("stream_state", None)
                outcome = self.training_step(batch)
                loss, tokens = outcome["loss"], outcome["tokens"]
                self.state.step += 1
                self.state.stream = stream_state
                window_tokens += tokens
                trained_tokens += tokens
                progress.update(1)
                if not math.isfinite(loss):
                    self._diverged(loss)
                if self.state.step % args.logging_steps == 0 or self.state.step == args.max_steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.state.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                              "tokens_per_s": window_tokens / max(elapsed, 1e-9), "grad_norm": outcome["grad_norm"],
                              "targets": outcome["targets"], "epoch": self.epoch(),
                              "data_wait_s": round(window_wait, 4)}
                    progress.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}",
                                         data_wait=f"{window_wait / max(elapsed, 1e-9):.0%}")
                    self._log("log.jsonl", record)
                    window_tokens, window_start, window_wait = 0, time.perf_counter(), 0.0
                self.on_step_end()
        del batches  # stops the DataLoader workers before evaluation and saving
        wall_time = time.perf_counter() - started
        results = self.evaluate()
        results.update(step=self.state.step, train_tokens_per_s=trained_tokens / max(wall_time, 1e-9),
                       train_wall_time_s=wall_time, num_processes=accelerator.num_processes)
        self._log("eval_log.jsonl", {"step": self.state.step, **{f"eval_{k}": v for k, v in results.items()}})
        self.save_final(results)
        accelerator.end_training()
        return results

    def epoch(self) -> float:
        """Passes over the training data so far (when streaming: the pass the stream is in)."""
        if self.recipe.data.streaming:
            return float(self.state.stream["pass"])
        return self.state.step / (len(self.train_set) // self.args.batch_size)

    def on_step_end(self) -> None:
        """Step-boundary work: periodic evaluation and checkpoints. Override to add more (e.g. growth)."""
        step, args = self.state.step, self.args
        if args.eval_steps and step % args.eval_steps == 0 and step < args.max_steps:
            results = self.evaluate()
            self._log("eval_log.jsonl", {"step": step, **{f"eval_{k}": v for k, v in results.items()}})
        if step % args.save_steps == 0:
            self.save_checkpoint()

    def _diverged(self, loss: float) -> None:
        last = latest_checkpoint(self.output_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDivergedError(
            f"the training loss became {loss} at step {self.state.step}; {kept}; lower training.lr, raise "
            "training.warmup_steps or use mixed_precision=bf16 instead of fp16, then rerun with --resume."
        )

    def _logged_seconds(self) -> float:
        """The wall-clock seconds that log.jsonl already covers (0 for a new run)."""
        return next((r["elapsed_s"] for r in reversed(read_log(self.output_dir / "log.jsonl")) if "elapsed_s" in r), 0.0)

    def _log(self, name: str, record: dict) -> None:
        """Append one JSON line with the run's wall-clock seconds so far (main process), send it to the trackers,
        and print evaluations above the progress bar."""
        record = {**record, "elapsed_s": round(time.perf_counter() - self.clock_start, 3)}
        if name == "eval_log.jsonl" and self.accelerator.is_main_process:
            summary = " | ".join(f"{k[5:]} {v:.4g}" for k, v in record.items() if k.startswith("eval_"))
            write(f"step {record['step']} | eval | {summary}")
        if self.accelerator.is_main_process:
            with open(self.output_dir / name, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.args.report_to:
            self.accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])

    # ---- saving

    def save_checkpoint(self) -> Path:
        """Accelerate's full state (model as safetensors, optimizer, scheduler, RNG, collator, step),
        written to a .tmp directory, marked complete and renamed: never half-visible."""
        accelerator, step = self.accelerator, self.state.step
        final = self.output_dir / f"checkpoint-{step}"
        partial = self.output_dir / f"checkpoint-{step}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        if self.recipe.data.streaming:
            self.state.streams = gather_object([self.state.stream])
        try:
            accelerator.save_state(str(partial), safe_serialization=True)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                self.recipe.save(partial / "recipe.yaml")
                records = directory_records(partial)
                marker = partial / COMPLETE_MARKER
                marker.write_text(json.dumps({"step": step, "files": records}))
                file_record(marker)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            last = latest_checkpoint(self.output_dir)
            kept = f"the previous checkpoint {last.name} is intact" if last else "no earlier checkpoint exists"
            raise StorageError(
                f"could not write {final} ({getattr(error, 'strerror', None) or error}); {kept}; free space on "
                "that disk, then rerun with --resume."
            ) from None
        if accelerator.is_main_process:
            if final.exists():
                remove_checkpoint(final)
            os.replace(partial, final)
            self._prune_checkpoints()
        accelerator.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        checkpoints = complete_checkpoints(self.output_dir)
        for old in checkpoints[: -limit] if limit else []:
            remove_checkpoint(old)

    def save_final(self, results: dict[str, float]) -> None:
        """The model (save_pretrained), its tokenizer, the resolved recipe and eval_results.json at the root."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        model = accelerator.unwrap_model(self.model)
        model.save_pretrained(self.output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=accelerator.get_state_dict(self.model))
        if accelerator.is_main_process:
            self.tokenizer.save_pretrained(self.output_dir)
            self.recipe.save(self.output_dir / "recipe.yaml")
            (self.output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
            if self.args.whiten_at_end:
                self.save_whitening(model)
        accelerator.wait_for_everyone()

    def save_whitening(self, model: MaskAEForMaskedLM) -> None:
        """`training.whiten_at_end`: a whitening of the code, fitted on a seeded sample of the training
        corpus's lines (no labels), saved beside the final model so that embed and evaluate apply it."""
        cap = DEFAULT_MAX_TEXTS if self.args.whiten_at_end is True else self.args.whiten_at_end
        texts = whitening_texts(self.recipe, cap, seed=self.args.seed)
        fit_whitening(Embedder(model, self.tokenizer), texts).save(self.output_dir)

