"""Distil a teacher's sentence embedding into the first K layers of itself: early exit that keeps quality.

The student is the teacher split at K (`model.split_layer`): the encoder (embeddings and layers 1..K)
trains so that its pooled code matches the frozen teacher's sentence embedding of the same text, and the
remaining layers stay as they are, as the decoder. The result is an ordinary MaskAE run whose code is
layer K, so embed, evaluate, whiten and every export take it. K = 0 leaves the embedding layer alone:
a static embedding (a lookup and a mean, no attention), the method of tokenlearn / model2vec's potion
models; K = depth starts at zero loss.

The loop is `Trainer`'s (Accelerate, step-keyed batches, exact resume, atomic checkpoints, the run lock);
what changes is the data (sentences and the cached teacher vectors of each, `teacher`), the loss, the
label-free evaluation (cosine to the teacher on held-out sentences) and the kept model: the evaluation's
best (`best.KeepsBest`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from datasets import Dataset
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import AutoConfig

from ..configuration_maskae import num_layers
from ..data.corpus import distinct_sentences, hold_out, sample_texts
from ..data.sampling import StepBatchSampler, TaggedRows
from ..embeddings.embedder import Embedder
from ..embeddings.inputs import check_vocabulary, pad_batch
from ..errors import CheckpointError, ConfigError, DataError, TokenizerError
from ..modeling_maskae import MaskAEForMaskedLM, MaskAEModel, pool
from .best import KeepsBest
from .builders import build_model, build_tokenizer
from .teacher import teacher_embeddings, token_embeddings
from .trainer import Trainer


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    loss: str = "cosine+mse",
    similarity_weight: float = 0.0,
    matryoshka_dims: list[int] | tuple[int, ...] = (),
) -> torch.Tensor:
    """Mean over the batch of the distance between student and teacher sentence vectors [batch, dim]:
    `1 - cosine`, the mean squared error per dimension, or both; averaged over the full width and each
    nested width in `matryoshka_dims`, plus `similarity_weight` x the mean squared difference of the
    two in-batch cosine-similarity matrices."""
    student, teacher = student.float(), teacher.float()
    widths = [student.shape[-1], *(d for d in matryoshka_dims if d < student.shape[-1])]
    total = student.new_zeros(())
    for width in widths:
        s, t = student[:, :width], teacher[:, :width]
        if "cosine" in loss:
            total = total + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        if "mse" in loss:
            total = total + F.mse_loss(s, t)
        if similarity_weight:
            s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
            total = total + similarity_weight * F.mse_loss(s @ s.T, t @ t.T)
    return total / len(widths)


class DistillationCollator:
    """Pads a batch of tagged rows and brings the teacher's vector of each along."""

    def __init__(self, targets: torch.Tensor, pad_token_id: int) -> None:
        self.targets, self.pad_token_id = targets, pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch([row["input_ids"] for row in rows], self.pad_token_id)
        index = torch.tensor([row["noise_index"] for row in rows])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "target": self.targets[index]}


class DistillationTrainer(KeepsBest, Trainer):
    """`Trainer` with the distillation objective; see the module docstring."""

    # ---- data

    def prepare_data(self) -> None:
        recipe, distill, accelerator = self.recipe, self.recipe.distill, self.accelerator
        self.check_depth()
        texts = distinct_sentences(distill.corpus, recipe.data.text_column)
        if recipe.data.validation is not None:
            held_out = distinct_sentences([recipe.data.validation], recipe.data.text_column)
        else:
            texts, held_out = hold_out(texts, recipe.data.validation_fraction, self.args.seed)
        held_out = sample_texts(held_out, distill.max_eval_texts, seed=self.args.seed)
        if len(texts) < self.args.batch_size:
            raise DataError(f"the corpus has {len(texts)} distinct training sentences, fewer than one batch "
                            f"(training.batch_size={self.args.batch_size}); give more text or lower the batch size.")
        self.tokenizer = build_tokenizer(recipe, self.output_dir, accelerator)
        self.check_tokenizer()
        with accelerator.main_process_first():  # the main process computes, the others read its cache
            settings = dict(cache_dir=self.teacher_cache, pooling=distill.teacher_pooling,
                            max_length=distill.max_length, show_progress=accelerator.is_local_main_process)
            self.train_targets = teacher_embeddings(self.teacher, texts, **settings)
            self.eval_targets = teacher_embeddings(self.teacher, held_out, **settings)
        self.train_set = Dataset.from_dict({"input_ids": self._tokenize(texts)})
        self.eval_ids, self.held_out = self._tokenize(held_out), held_out
        self.collator = DistillationCollator(self.train_targets, self.tokenizer.pad_token_id)
        eval_rows = [{"input_ids": ids, "noise_index": i} for i, ids in enumerate(self.eval_ids)]
        eval_collator, size = DistillationCollator(self.eval_targets, self.tokenizer.pad_token_id), self.args.eval_batch_size
        self.eval_batches = [eval_collator(eval_rows[start:start + size]) for start in range(0, len(eval_rows), size)]
        self.best = {"step": None, "teacher_cosine": -2.0}

    def check_depth(self) -> None:
        """K must be a layer of the teacher: refused before the teacher embeds anything."""
        backbone, layer = self.recipe.model.backbone, self.recipe.model.split_layer
        try:
            depth = num_layers(AutoConfig.from_pretrained(backbone))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot load a model config from {backbone!r} ({error}); pass a directory with a "
                                  "config.json or a Hub model id.") from None
        if not 0 <= layer <= depth:
            raise ConfigError(f"layer {layer} is out of range: {backbone!r} has {depth} layers; choose 0 (the "
                              f"embedding layer alone) to {depth}.")

    @property
    def teacher(self) -> str:
        return self.recipe.distill.teacher or self.recipe.model.backbone

    @property
    def teacher_cache(self) -> Path:
        cache = self.recipe.distill.teacher_cache
        return Path(cache) if cache else self.output_dir / "teacher"

    def check_tokenizer(self) -> None:
        """A tokenizer of special tokens alone (a directory without vocabulary files) or without padding
        is refused before the teacher embeds anything."""
        source = self.recipe.tokenizer.path or self.recipe.model.backbone
        check_vocabulary(self.tokenizer, source)
        if self.tokenizer.pad_token_id is None:
            raise TokenizerError(f"the tokenizer of {source!r} has no padding token; set tokenizer.path to one that has.")

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.recipe.distill.max_length,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def batches(self):
        args, accelerator = self.args, self.accelerator
        sampler = StepBatchSampler(len(self.train_set), args.batch_size, args.seed, accelerator.process_index,
                                   accelerator.num_processes, start_step=self.state.step)
        return iter(DataLoader(TaggedRows(self.train_set), batch_sampler=sampler, collate_fn=self.collator,
                               num_workers=self.num_workers(), generator=torch.Generator().manual_seed(args.seed)))

    # ---- model

    def initial_model(self) -> MaskAEForMaskedLM:
        """The teacher split at K; only the encoder trains (the embeddings too, unless told otherwise)."""
        model = build_model(self.recipe, self.tokenizer)
        if model.config.split_layer == 0 and self.recipe.distill.static_init == "teacher_tokens":
            self.start_from_teacher_tokens(model)
        train_embeddings = self.recipe.distill.train_embeddings or model.config.split_layer == 0
        for name, parameter in model.named_parameters():
            in_encoder = name.startswith("maskae.")
            parameter.requires_grad = in_encoder and (train_embeddings or ".embeddings." not in f".{name}")
        return model

    @torch.no_grad()
    def start_from_teacher_tokens(self, model: MaskAEForMaskedLM) -> None:
        """Each row of the table becomes the teacher's embedding of that token alone, standardised, with the
        embedding norm's scale and shift reset, so that the static model starts as model2vec's distillation
        (without its PCA) and the rows the corpus never trains stay in the teacher's space."""
        with self.accelerator.main_process_first():
            vectors = token_embeddings(self.teacher, self.teacher_cache, self.recipe.distill.teacher_pooling)
        table = model.get_input_embeddings().weight
        if vectors.shape != table.shape:
            raise ConfigError(f"distill.static_init=teacher_tokens needs a teacher of the student's vocabulary and width "
                              f"({tuple(table.shape)}), not {tuple(vectors.shape)}; use static_init=model.")
        table.copy_((vectors - vectors.mean(-1, keepdim=True)) / vectors.std(-1, keepdim=True).clamp(min=1e-6))
        embeddings = model.maskae.backbone.embeddings
        for norm in (m for m in embeddings.modules() if isinstance(m, torch.nn.LayerNorm) and m.weight is not None):
            norm.weight.fill_(1.0)
            if norm.bias is not None:
                norm.bias.fill_(0.0)

    def prepare_model(self, model: MaskAEForMaskedLM) -> None:
        """Accelerate prepares the encoder alone: the frozen decoder is not run, and saved only at the end."""
        self.full_model = model
        for module in model.maskae.modules():  # the saved config keeps the teacher's rates
            if isinstance(module, torch.nn.Dropout):
                module.p = self.recipe.distill.dropout
        super().prepare_model(model.maskae)

    # ---- steps

    def student(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        code = self.model(input_ids=input_ids, attention_mask=attention_mask).code
        return pool(code, attention_mask, self.recipe.distill.pooling)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        distill = self.recipe.distill
        return distillation_loss(self.student(batch["input_ids"], batch["attention_mask"]), batch["target"],
                                 distill.loss, distill.similarity_weight, distill.matryoshka_dims)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float | None]:
        """One optimizer step; the loss is the global batch's mean (each micro-batch weighted by its rows)."""
        accelerator, args = self.accelerator, self.args
        rows = args.batch_size // accelerator.num_processes
        loss_sum = torch.zeros((), device=accelerator.device)
        grad_norm = None
        for micro in self.micro_batches(batch):
            with accelerator.accumulate(self.model):
                share = len(micro["input_ids"]) / rows
                loss = self.loss(micro) * share
                accelerator.backward(loss * args.gradient_accumulation_steps)
                loss_sum += loss.detach()
                if accelerator.sync_gradients and args.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        loss = accelerator.reduce(loss_sum, reduction="mean").item()
        tokens = int(accelerator.reduce(batch["attention_mask"].sum().to(accelerator.device), reduction="sum"))
        return {"loss": loss, "grad_norm": None if grad_norm is None else float(grad_norm), "targets": args.batch_size,
                "tokens": tokens}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The label-free signal: mean cosine between the student's and the teacher's embeddings of the
        held-out sentences, and the training loss there; the best model so far is kept in `best/`."""
        model = self.model
        was_training = model.training
        model.eval()
        cosines, losses = [], []
        for batch in self.eval_batches:
            batch = {key: value.to(self.accelerator.device) for key, value in batch.items()}
            student = self.student(batch["input_ids"], batch["attention_mask"])
            cosines.append(F.cosine_similarity(student.float(), batch["target"].float(), dim=-1))
            losses.append(self.loss(batch) * len(student))
        model.train(was_training)
        results = {"teacher_cosine": float(torch.cat(cosines).mean()),
                   "loss": float(sum(losses)) / len(self.eval_ids)}
        if results["teacher_cosine"] > self.best["teacher_cosine"]:
            self.keep(results)
        return {**results, "best_step": self.best["step"], "best_teacher_cosine": self.best["teacher_cosine"]}

    def on_train_start(self) -> None:
        """A new run scores the starting point first: the kept model is never worse than the teacher's own
        layer K (at K = depth, the teacher itself)."""
        if self.state.step == 0:
            self._log("eval_log.jsonl", {"step": 0, **{f"eval_{k}": v for k, v in self.evaluate().items()}})

    # ---- time and saving

    def out_of_time(self) -> bool:
        minutes = self.recipe.distill.max_minutes
        return minutes is not None and time.perf_counter() - self.clock_start >= 60 * minutes

    def epoch(self) -> float:
        return self.state.step / (len(self.train_set) // self.args.batch_size)

    def save_final(self, results: dict[str, float]) -> None:
        """The best model by held-out cosine to the teacher (the whole split model, frozen decoder included)."""
        encoder: MaskAEModel = extract_model_from_parallel(self.model)
        if self.restore_best():
            results.update({k: v for k, v in self.best.items() if k != "step"})  # train() returns this dict
        results["distilled_layer"] = self.full_model.config.split_layer
        if self.accelerator.is_main_process:
            results.update(self.measure_speed(encoder))
        self.model = self.full_model  # what the base class saves: the whole model
        super().save_final(results)

    @torch.inference_mode()
    def measure_speed(self, encoder: MaskAEModel) -> dict[str, float]:
        """Sentences per second of the student and of the teacher on the held-out sentences, one after
        the other in this process: the speed that the model card quotes beside the quality."""
        texts = self.held_out
        teacher = Embedder.from_pretrained(self.teacher, device=self.accelerator.device)
        speeds = {}
        for name, embedder in (("teacher_sentences_per_s", teacher), ("sentences_per_s", Embedder(encoder, self.tokenizer))):
            embedder.embed(texts[:64], pooling=self.recipe.distill.pooling)  # warm-up
            start = time.perf_counter()
            embedder.embed(texts, pooling=self.recipe.distill.pooling)
            speeds[name] = len(texts) / (time.perf_counter() - start)
        return {**speeds, "speedup_vs_teacher": speeds["sentences_per_s"] / speeds["teacher_sentences_per_s"]}
