"""Masked-LM figures on held-out text: masked-token accuracy, loss and perplexity over the masked
positions, and pseudo-perplexity (each token masked alone, Salazar et al., 2020).

The arithmetic lives in the `masked_accuracy` evaluate module shipped beside it; this
module runs the model and feeds it. Every process runs the same batches (no gather needed, and
sharded FSDP models see the same collective calls on every rank).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from ..modeling_maskae import IGNORE_INDEX
from . import load_metric


def target_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) at the target positions only, whether or not the model predicted sparsely."""
    flat_labels = labels.reshape(-1)
    keep = flat_labels != IGNORE_INDEX
    if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
        return logits, flat_labels[keep]  # sparse prediction: already gathered, in row-major order
    return logits.reshape(-1, logits.shape[-1])[keep], flat_labels[keep]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def masked_lm_metrics(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Accuracy, loss and perplexity over the labelled positions of already-noised batches; for a
    replaced-token detection model (whose figures above are its generator's), also the detector's
    accuracy and binary cross-entropy over all real tokens (`replaced_accuracy`, `replaced_loss`)."""
    was_training = model.training
    model.eval()
    metric, detection, device = load_metric("masked_accuracy"), None, _device_of(model)
    scored = 0
    # A model that samples (the RTD generator) draws the same samples at every evaluation, from a fixed
    # seed, and leaves the training run's random state as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for batch in batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            output = model(**batch)
            logits, labels = target_logits(output.logits, batch["labels"])
            if labels.numel():  # a short batch can draw no target; evaluate cannot add an empty batch
                losses = F.cross_entropy(logits.float(), labels, reduction="none")
                metric.add_batch(predictions=logits.argmax(-1).tolist(), references=labels.tolist(),
                                 losses=losses.tolist())
                scored += labels.numel()
            if getattr(output, "replaced_labels", None) is not None:
                detection = detection or load_metric("masked_accuracy")
                real = batch["attention_mask"].bool()
                logits, labels = output.replaced_logits[real].float(), output.replaced_labels[real]
                losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
                detection.add_batch(predictions=(logits > 0).long().tolist(), references=labels.long().tolist(),
                                    losses=losses.tolist())
    model.train(was_training)
    if not scored:
        raise DataError("the evaluation text drew no masked position to score: it is too short, or every token is "
                        "special ([UNK] included: text the tokenizer does not know); pass more text in the model's "
                        "vocabulary.")
    result = metric.compute()
    results = {"masked_accuracy": result["accuracy"], "masked_loss": result["loss"], "perplexity": result["perplexity"]}
    if detection is not None:
        detected = detection.compute()
        results.update(replaced_accuracy=detected["accuracy"], replaced_loss=detected["loss"])
    return results


@torch.no_grad()
def pseudo_perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_token_id: int,
    special_ids: Iterable[int],
    batch_size: int = 64,
) -> dict[str, float]:
    """exp of the mean, over every real non-special token, of -log p(token | all others), each token
    masked alone; also the accuracy of those one-at-a-time predictions."""
    was_training = model.training
    model.eval()
    metric, device = load_metric("masked_accuracy"), _device_of(model)
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    scored = attention_mask.bool() & ~torch.isin(input_ids, special)
    rows, columns = scored.nonzero(as_tuple=True)
    for start in range(0, len(rows), batch_size):
        row, column = rows[start : start + batch_size], columns[start : start + batch_size]
        copies, mask = input_ids[row].clone(), attention_mask[row]
        arange = torch.arange(len(row))
        labels = torch.full_like(copies, IGNORE_INDEX)
        labels[arange, column] = copies[arange, column]
        copies[arange, column] = mask_token_id
        batch = {"input_ids": copies.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
        logits, targets = target_logits(model(**batch).logits, batch["labels"])
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        metric.add_batch(predictions=logits.argmax(-1).tolist(), references=targets.tolist(), losses=losses.tolist())
    model.train(was_training)
    result = metric.compute()
    return {"pseudo_perplexity": result["perplexity"], "pseudo_accuracy": result["accuracy"]}
