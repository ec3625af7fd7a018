"""The training loop: a recipe in, a trained MaskAE model, logs, checkpoints and an evaluation out.

It follows Accelerate's examples (prepare, loop, evaluate, save) with these deliberate choices:

* `training.batch_size` is the *global* batch, and which sequences it holds at each step is a function
  of (seed, step) alone (see `data.sampling`). Each process reads and noises only its own rows, in
  DataLoader workers ahead of the step, and a row's noise depends only on (seed, epoch, its index)
  (`data.noise.KeyedRandom`). The loss is the exact token-level mean over the global batch (each rank scales
  its sum by the global target count), so one process and N processes, with or without gradient
  accumulation, train the same model up to float rounding, and a checkpoint written by N processes
  resumes on M.
* The data position is the step (map-style data) or the stream's state after the last batch trained
  on (`data.streaming`), both saved in the checkpoint; with RNG states restored too, resuming is
  bit-exact.
* Checkpoints are never half-visible and a resume passes over damaged ones (see `checkpoints`).
* One run per output directory: `run.train` holds a lock file there (see `utils.run_lock`).

`Trainer` keeps each phase in its own method so that later features (e.g. growing the encoder at
stage boundaries) can hook in at step boundaries by overriding `on_step_end`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from accelerate.utils import (
    load as load_tensors,  # torch.load, weights_only=True, numpy RNG states allowed
)
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import get_scheduler

from ..data.collator import DataCollatorForDenoising
from ..data.sampling import StepBatchSampler, TaggedRows
from ..data.streaming import PackedBatchStream
from ..embeddings.embedder import Embedder, fit_whitening
from ..embeddings.whitening import DEFAULT_MAX_TEXTS
from ..errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MaskAEError,
    StorageError,
    cause,
)
from ..metrics.masked_lm import masked_lm_metrics, pseudo_perplexity
from ..modeling_maskae import IGNORE_INDEX, MaskAEForMaskedLM
from ..utils.console import Progress, write
from ..utils.host import bf16_unit_or_warn
from ..utils.preemption import Preempted, stop_requested
from . import checkpoints
from .builders import (
    build_model,
    build_tokenizer,
    init_trackers,
    load_texts,
    tokenize,
    train_source,
    whitening_texts,
)
from .cpu_attention import use_cpu_attention
from .dropout import use_fast_dropout
from .logs import read_log
from .optimization import build_optimizer
from .recipe import Recipe

logger = logging.getLogger(__name__)

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
    position (gathered first, since the main process writes it). Stored as JSON in `train_state.json`
    rather than registered with Accelerate, which would pickle it and load it back with
    `weights_only=False`: a checkpoint must never be able to run code."""

    FILE = "train_state.json"

    def __init__(self) -> None:
        self.step = 0
        self.stream: dict | None = None  # this process's stream position after the last step
        self.streams: list[dict] | None = None  # every process's, gathered for a checkpoint

    def state_dict(self) -> dict:
        return {"step": self.step, "streams": self.streams}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.streams = state.get("streams")

    def save(self, checkpoint: Path) -> None:
        (checkpoint / self.FILE).write_text(json.dumps(self.state_dict()))

    def load(self, checkpoint: Path) -> None:
        path = checkpoint / self.FILE
        legacy = checkpoint / "custom_checkpoint_0.pkl"  # how maskae before 0.2 stored it, through Accelerate
        try:
            if not path.is_file() and legacy.is_file():
                self.load_state_dict(torch.load(legacy, weights_only=True))
                return
            self.load_state_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:  # RuntimeError: a refused pickle
            raise CheckpointError(f"cannot read {path} ({cause(error)}); move {checkpoint.name} away to resume from "
                                  "the checkpoint before it.") from None


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
        """Accelerator, data, model, optimizer and scheduler, in that order; then resume if asked."""
        self.accelerator = self.make_accelerator()
        self.prepare_data()
        self.prepare_model(self.initial_model())
        if self.resume:
            self._resume()

    def make_accelerator(self) -> Accelerator:
        """The Accelerator, after the checks that need it (no overwritten run, a batch that divides)."""
        args = self.args
        precision = args.mixed_precision
        if precision == "bf16" and PartialState().device.type == "cpu" and not bf16_unit_or_warn("training"):
            precision = "no"
        accelerator = Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=args.report_to or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir)),
            step_scheduler_with_optimizer=False,  # one scheduler step per real optimizer step, any process count
        )
        if not self.resume and accelerator.is_main_process and checkpoints.complete_checkpoints(self.output_dir):
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
        return accelerator

    def prepare_data(self) -> None:
        """Tokenizer, tokenized training and held-out sets, the collator and the fixed noised held-out batches."""
        args, accelerator = self.args, self.accelerator
        train_text, eval_text = self.texts()
        self.tokenizer = build_tokenizer(self.recipe, self.output_dir, accelerator)
        self.check_tokenizer()
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

    def texts(self) -> tuple[Dataset | None, Dataset]:
        """(training, held-out) text as the recipe's data section gives it; override to read other text."""
        return load_texts(self.recipe)

    def check_tokenizer(self) -> None:
        """Refuse a tokenizer the objective cannot use before anything is tokenized (any is fine here)."""

    def learning_rates(self, model: torch.nn.Module) -> dict[str, float]:
        """Parameter name -> learning rate, for parameters that differ from training.lr (none here)."""
        return {}

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Compile or checkpoint as asked, build the optimizer and scheduler, and hand them to Accelerate."""
        args, accelerator = self.args, self.accelerator
        if accelerator.device.type == "cpu":  # PyTorch's CPU dropout, and its bf16 attention, are slow there
            use_fast_dropout(model)
            use_cpu_attention(model, bf16=accelerator.mixed_precision == "bf16")
        if args.compile:
            model.compile_layers()
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = build_optimizer(model, accelerator.device, lrs=self.learning_rates(model), **args.optimizer_settings())
        scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps,
                                  num_training_steps=args.max_steps)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        accelerator.register_save_state_pre_hook(checkpoints.drop_tied_copies)
        init_trackers(accelerator, self.recipe)

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
        checkpoint = checkpoints.intact_checkpoint(self.output_dir, self.accelerator)
        if checkpoint is None:
            logger.info("no complete checkpoint in %s; starting from scratch", self.output_dir)
            return
        self.prepare_to_load(checkpoint)
        try:
            # Optimizer, scheduler and RNG states are torch.save files: load tensors and plain containers only,
            # explicitly, whatever torch's default (it unpickled anything before torch 2.6). Accelerate skips
            # RNG states it cannot read with an info line, which would resume with other dropout masks: read
            # them first, so that a bad file is an error.
            # (A process with no file of its own is an elastic resume on more processes than wrote the
            # checkpoint: it keeps its seeded state, as documented.)
            rng_states = checkpoint / f"random_states_{self.accelerator.process_index}.pkl"
            if rng_states.is_file():
                load_tensors(rng_states)
            self.accelerator.load_state(str(checkpoint), load_kwargs={"weights_only": True})
        except Exception as error:  # safetensors, torch.load and pickle each raise their own types
            raise CheckpointError(f"cannot load {checkpoint} ({cause(error)}); move it away to resume from the one "
                                  "before it, or rerun without --resume into a new --output-dir.") from None
        self.state.load(checkpoint)
        if self.recipe.data.streaming:
            self._restore_stream_position(checkpoint)
        self.restore_from_checkpoint(checkpoint)
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

    def add_to_checkpoint(self, partial: Path) -> None:
        """Main process: files of the run's own state to keep in the checkpoint being written (none here)."""

    def restore_from_checkpoint(self, checkpoint: Path) -> None:
        """Bring back what `add_to_checkpoint` kept, after the states loaded (nothing here)."""

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
        over its targets, the gradient norm before clipping, the global numbers of targets and tokens, and
        the global batch's mean of each `extra_losses` term."""
        accelerator, model = self.accelerator, self.model
        local = torch.stack([(batch["labels"] != IGNORE_INDEX).sum(), batch["attention_mask"].sum()])
        num_targets, num_tokens = (int(n) for n in accelerator.reduce(local.to(accelerator.device), reduction="sum"))
        # Each rank's summed loss over the global target count; Accelerate divides by the accumulation
        # steps and DDP averages over ranks, hence the factor: the gradient is that of the global mean.
        scale = accelerator.num_processes * self.args.gradient_accumulation_steps / max(num_targets, 1)
        rows = self.args.batch_size // accelerator.num_processes
        loss_sum = torch.zeros((), device=accelerator.device)
        extras: dict[str, float] = {}
        grad_norm = None
        for micro in self.micro_batches(batch):
            with accelerator.accumulate(model):
                # The model's loss is the mean over this micro-batch's targets (0 when it has none).
                output = model(**micro)
                summed = output.loss * max(int((micro["labels"] != IGNORE_INDEX).sum()), 1)
                total = summed * scale
                # Extra terms are means over this micro-batch's rows, weighted by its share of this
                # process's rows; DDP's average over ranks makes them the global batch's mean.
                share = len(micro["input_ids"]) / rows
                for name, (weight, term) in self.extra_losses(micro, output).items():
                    total = total + weight * term * share * self.args.gradient_accumulation_steps
                    extras[name] = extras.get(name, 0.0) + float(term.detach()) * share
                accelerator.backward(total)
                loss_sum += summed.detach()
                if accelerator.sync_gradients and self.args.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        loss = accelerator.reduce(loss_sum, reduction="sum").item() / max(num_targets, 1)
        outcome = {"loss": loss, "grad_norm": None if grad_norm is None else float(grad_norm), "targets": num_targets,
                   "tokens": num_tokens}
        if extras:
            means = accelerator.reduce(torch.tensor(list(extras.values()), device=accelerator.device), reduction="mean")
            outcome.update(zip(extras, means.tolist()))
        return outcome

    def extra_losses(self, micro: dict[str, torch.Tensor], output: object) -> dict[str, tuple[float, torch.Tensor]]:
        """Terms added to the reconstruction loss, as name -> (weight, mean over the micro-batch's rows); each
        is logged unweighted (none here; adaptation adds its anchors)."""
        return {}

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
        self.on_train_start()
        self.model.train()
        window_tokens, window_start, window_wait, trained_tokens = 0, time.perf_counter(), 0.0, 0
        batches = self.batches()
        # Closed on the way out of an error too, so that the error is printed on a line of its own.
        with Progress(args.max_steps, initial=self.state.step, enabled=accelerator.is_local_main_process) as progress:
            while self.state.step < args.max_steps and not self.out_of_time():
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
                if self.state.step % args.logging_steps == 0 or self.state.step == args.max_steps or self.out_of_time():
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.state.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                              "tokens_per_s": window_tokens / max(elapsed, 1e-9), "grad_norm": outcome["grad_norm"],
                              "targets": outcome["targets"], "epoch": self.epoch(),
                              "data_wait_s": round(window_wait, 4)}
                    record.update({k: v for k, v in outcome.items() if k not in ("loss", "grad_norm", "targets", "tokens")})
                    progress.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}",
                                         data_wait=f"{window_wait / max(elapsed, 1e-9):.0%}")
                    self._log("log.jsonl", record)
                    window_tokens, window_start, window_wait = 0, time.perf_counter(), 0.0
                self.on_step_end()
                signum = self._stop_requested()
                if signum is not None:
                    self._stop_for(signum)
        del batches  # stops the DataLoader workers before evaluation and saving
        wall_time = time.perf_counter() - started
        results = self.evaluate()
        results.update(step=self.state.step, train_tokens_per_s=trained_tokens / max(wall_time, 1e-9),
                       train_wall_time_s=wall_time, num_processes=accelerator.num_processes)
        self._log("eval_log.jsonl", {"step": self.state.step, **{f"eval_{k}": v for k, v in results.items()}})
        self.save_final(results)
        accelerator.end_training()
        return results

    def _stop_requested(self) -> int | None:
        """The signal that asked this run to stop (`utils.preemption`), agreed by every process so that all
        stop after the same step."""
        signum = stop_requested()
        if self.accelerator.num_processes == 1:
            return signum
        flag = torch.tensor([signum or 0], device=self.accelerator.device)
        return int(self.accelerator.reduce(flag, reduction="max").item()) or None

    def _stop_for(self, signum: int) -> None:
        """Checkpoint the step just finished (unless on_step_end did) and stop with a line on how to resume."""
        step = self.state.step
        if step % self.args.save_steps != 0:
            self.save_checkpoint()
        raise Preempted(signum, f"stopped by {signal.Signals(signum).name} after step {step} of {self.args.max_steps}; "
                        f"checkpoint-{step} is written; continue with the same command and --resume")

    def on_train_start(self) -> None:
        """Work before the first step of this process's run (none here; distillation scores its start)."""

    def out_of_time(self) -> bool:
        """Whether a wall-clock budget is spent (none here; distillation has one): checked before each step."""
        return False

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
        last = checkpoints.latest_checkpoint(self.output_dir)
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
        """Accelerate's full state (model as safetensors, optimizer, scheduler, RNG) and the step as JSON,
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
                self.state.save(partial)
                self.recipe.save(partial / "recipe.yaml")
                self.add_to_checkpoint(partial)
                checkpoints.mark_complete(partial, step)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            last = checkpoints.latest_checkpoint(self.output_dir)
            kept = f"the previous checkpoint {last.name} is intact" if last else "no earlier checkpoint exists"
            raise StorageError(
                f"could not write {final} ({getattr(error, 'strerror', None) or error}); {kept}; free space on "
                "that disk, then rerun with --resume."
            ) from None
        if accelerator.is_main_process:
            checkpoints.publish(partial, final)
            checkpoints.prune_checkpoints(self.output_dir, self.args.save_total_limit)
        accelerator.wait_for_everyone()
        return final

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

