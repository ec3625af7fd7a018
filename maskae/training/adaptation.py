"""Continue denoising an existing encoder on the user's unlabelled text, without forgetting what made it good.

`maskae adapt --objective mlm` masks tokens and reconstructs them through the model's own remaining
layers and MLM head (task- and domain-adaptive pretraining, Gururangan et al. 2020); `--objective tsdae`
deletes tokens and reconstructs a masked copy from one pooled vector, through a decoder copied from the
checkpoint's top layers (TSDAE, Wang et al. 2021). Both are `Trainer`'s denoising loop with four changes:

- the parts the checkpoint lacks (a sentence encoder ships no MLM head) train alone first, at a rate of
  their own (adapt.head_warmup_steps, adapt.head_lr), so that a random head does not send random
  gradients into the encoder; then everything trains, the pretrained weights at training.lr;
- anchors against forgetting, which continued MLM on a contrastively trained encoder is known for
  (AdaSent, Huang et al. 2023): 1 - cosine between the pooled code and the frozen original's on the same
  input (adapt.anchor_weight; zero at step 0), the squared distance from the starting weights
  (adapt.l2_weight, L2-SP), and frozen lower layers (adapt.freeze_*);
- a label-free evaluation of held-out sentences: the reconstruction loss, the mean cosine of the clean
  sentences' embeddings to the original's, and their isotropy;
- the kept model (`best.KeepsBest`): the lowest held-out reconstruction loss among the evaluations whose
  cosine to the original stays at least adapt.min_original_cosine; step 0 always qualifies.
"""

from __future__ import annotations

import copy
import time

import torch
from accelerate.utils import extract_model_from_parallel
from datasets import Dataset
from torch.nn import functional as F

from ..data.corpus import distinct_sentences, hold_out, sample_texts
from ..embeddings.inputs import pad_batch
from ..errors import ConfigError, DataError, TokenizerError
from ..modeling_maskae import MaskAEForMaskedLM, MaskAEModel, pool
from .best import KeepsBest
from .trainer import Trainer


def anchor_loss(code: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - cosine between two sets of sentence vectors [batch, dim]."""
    return (1 - F.cosine_similarity(code.float(), original.float(), dim=-1)).mean()


def isotropy(vectors: torch.Tensor) -> dict[str, float]:
    """How evenly sentence vectors [n, dim] fill their space: `isotropy`, the participation ratio of the
    centred covariance's eigenvalues over the width (1: every direction equally used; 1/dim: a line), and
    `mean_cosine`, the mean cosine between distinct vectors (anisotropy, Ethayarajh 2019: near 1, all
    vectors point one way)."""
    vectors = vectors.double()
    centred = vectors - vectors.mean(0)
    eigenvalues = torch.linalg.svdvals(centred) ** 2
    participation = float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum().clamp_min(1e-30))
    unit = F.normalize(vectors, dim=-1)
    n = len(unit)
    pairs = float((unit.sum(0) @ unit.sum(0) - n) / max(n * (n - 1), 1))
    return {"isotropy": participation / vectors.shape[1], "mean_cosine": pairs}


class AdaptationTrainer(KeepsBest, Trainer):
    """`Trainer` with the changes of the module docstring; the recipe's `adapt` section drives them."""

    # ---- data

    def texts(self) -> tuple[Dataset, Dataset]:
        """The distinct sentences of adapt.corpus, one per training sequence, and the held-out ones."""
        recipe = self.recipe
        texts = distinct_sentences(recipe.adapt.corpus, recipe.data.text_column)
        if recipe.data.validation is not None:
            held_out = distinct_sentences([recipe.data.validation], recipe.data.text_column)
        else:
            texts, held_out = hold_out(texts, recipe.data.validation_fraction, self.args.seed)
        if len(texts) < self.args.batch_size:
            raise DataError(f"the corpus has {len(texts)} distinct training sentences, fewer than one batch "
                            f"(training.batch_size={self.args.batch_size}); give more text or lower the batch size.")
        self.held_out = sample_texts(held_out, recipe.adapt.max_eval_texts, seed=self.args.seed)
        return Dataset.from_dict({"text": texts}), Dataset.from_dict({"text": self.held_out})

    def check_tokenizer(self) -> None:
        if self.tokenizer.mask_token_id is None:
            raise TokenizerError(
                f"the tokenizer of {self.recipe.tokenizer.path or self.recipe.model.backbone!r} has no mask token, "
                "which denoising needs to mark what to reconstruct; use --objective distill, which needs none."
            )

    def prepare_data(self) -> None:
        """`Trainer`'s data, plus the held-out sentences clean, in batches, for the label-free signal."""
        super().prepare_data()
        ids = self.tokenizer(self.held_out, truncation=True, max_length=self.recipe.data.block_size,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        size = self.args.eval_batch_size
        self.clean_batches = [pad_batch(ids[start:start + size], self.tokenizer.pad_token_id)
                              for start in range(0, len(ids), size)]
        self.best = {"step": None}

    # ---- model

    def initial_model(self) -> MaskAEForMaskedLM:
        """The checkpoint split as the recipe says, its frozen parts frozen, and a frozen copy of its encoder
        (the original that the anchor and the label-free signal compare with)."""
        model = super().initial_model()
        adapt = self.recipe.adapt
        layers = [f"maskae.{name}." for name, _ in self._encoder_layers(model)]
        if adapt.freeze_layers > len(layers):
            raise ConfigError(f"adapt.freeze_layers={adapt.freeze_layers}, but the encoder has {len(layers)} layers; "
                              f"choose 0 to {len(layers)}.")
        for name, parameter in model.named_parameters():
            in_layer = name.startswith(tuple(layers))
            embedding = name.startswith("maskae.backbone.") and not in_layer  # the table, positions, their norm
            if name.startswith(tuple(layers[: adapt.freeze_layers])) or adapt.freeze_embeddings and embedding:
                parameter.requires_grad = False
        self.fresh = set(getattr(model, "fresh_keys", ()))
        self.original = copy.deepcopy(model.maskae).eval().requires_grad_(False).to(self.accelerator.device)
        self.original_vectors = self.sentence_vectors(self.original)
        return model

    @staticmethod
    def _encoder_layers(model: MaskAEForMaskedLM) -> list[tuple[str, torch.nn.Module]]:
        """(name within `model.maskae`, module) of each encoder layer, lowest first."""
        layers = {id(layer) for layer in model.maskae.layers()[: model.config.split_layer]}
        return [(name, module) for name, module in model.maskae.named_modules() if id(module) in layers]

    def learning_rates(self, model: torch.nn.Module) -> dict[str, float]:
        return {name: self.recipe.adapt.head_lr for name in self.fresh}

    @property
    def encoder(self) -> MaskAEModel:
        return extract_model_from_parallel(self.model).maskae

    # ---- steps

    def pooled(self, code: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding of a code: the code itself behind a sentence bottleneck, else its pooling."""
        return code if code.ndim == 2 else pool(code, attention_mask, self.recipe.adapt.pooling)

    @torch.no_grad()
    def sentence_vectors(self, encoder: MaskAEModel) -> torch.Tensor:
        """The held-out sentences, clean, through `encoder` in eval mode: [n, dim] float32 on the CPU."""
        was_training = encoder.training
        encoder.eval()
        device = self.accelerator.device
        vectors = []
        for input_ids, attention_mask in self.clean_batches:
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            code = encoder(input_ids=input_ids, attention_mask=attention_mask).code
            vectors.append(self.pooled(code, attention_mask).float().cpu())
        encoder.train(was_training)
        return torch.cat(vectors)

    def distance_from_start(self) -> torch.Tensor:
        """Sum of squared differences between the encoder's trainable weights and the original's (L2-SP)."""
        start = dict(self.original.named_parameters())
        pairs = [(p, start[name]) for name, p in self.encoder.named_parameters() if p.requires_grad]
        return sum(((p.float() - p0.float()) ** 2).sum() for p, p0 in pairs)

    def prepare_model(self, model: MaskAEForMaskedLM) -> None:
        """`Trainer.prepare_model`, then the optimizer groups of the pretrained weights, which the head
        warm-up holds still."""
        super().prepare_model(model)
        fresh = {id(p) for name, p in model.named_parameters() if name in self.fresh}
        self.pretrained_groups = [group for group in self.optimizer.param_groups
                                  if not any(id(p) in fresh for p in group["params"])]

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float | None]:
        """`Trainer.training_step` with the anchors (`extra_losses`). While the head warms up, the pretrained
        weights' learning rate is 0: Accelerate and DDP see the same parameters at every step, and the
        optimizer's moments start from real gradients."""
        warming = self.state.step < self.recipe.adapt.head_warmup_steps and bool(self.fresh)
        if warming:
            for group in self.pretrained_groups:
                group["lr"] = 0.0  # the scheduler sets it again from its base at its next step
        return {**super().training_step(batch), "head_only": warming}

    def extra_losses(self, micro: dict[str, torch.Tensor], output: object) -> dict[str, tuple[float, torch.Tensor]]:
        """The anchors that are on: 1 - cosine to the frozen original's pooled code on the same input, and
        the squared distance from the starting weights."""
        adapt, terms = self.recipe.adapt, {}
        if adapt.anchor_weight:
            mask = micro["attention_mask"]
            with torch.no_grad():
                target = self.original(input_ids=micro["input_ids"], attention_mask=mask).code
            terms["anchor"] = adapt.anchor_weight, anchor_loss(self.pooled(output.code, mask), self.pooled(target, mask))
        if adapt.l2_weight:
            terms["l2"] = adapt.l2_weight, self.distance_from_start()
        return terms

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The reconstruction figures of `Trainer.evaluate`, the mean cosine of the held-out sentences'
        embeddings to the original's, and their isotropy; keeps the model if it is the best so far."""
        results = super().evaluate()
        vectors = self.sentence_vectors(self.encoder)
        results["original_cosine"] = float(F.cosine_similarity(vectors, self.original_vectors, dim=-1).mean())
        results.update(isotropy(vectors))
        kept = self.best.get("masked_loss")
        if results["original_cosine"] >= self.recipe.adapt.min_original_cosine and (kept is None or results["masked_loss"] < kept):
            self.keep(results)
        return {**results, "best_step": self.best["step"]}

    def on_train_start(self) -> None:
        """A new run scores the starting point first, so that the kept model is never one that drifted."""
        if self.state.step == 0:
            self._log("eval_log.jsonl", {"step": 0, **{f"eval_{k}": v for k, v in self.evaluate().items()}})

    def out_of_time(self) -> bool:
        minutes = self.recipe.adapt.max_minutes
        return minutes is not None and time.perf_counter() - self.clock_start >= 60 * minutes

    def save_final(self, results: dict[str, float]) -> None:
        """The kept model, with its own evaluation in eval_results.json (and so in the model card)."""
        if self.restore_best():
            results.update({k: v for k, v in self.best.items() if k != "step"})  # train() returns this dict
        results["best_step"] = self.best["step"]
        results["adapted_layer"] = extract_model_from_parallel(self.model).config.split_layer
        super().save_final(results)
