"""The decoder side of a checkpoint: masked accuracy (BERT's 15% noise, seeded) and pseudo-perplexity
on a corpus, through the same scoring the training loop logs (`metrics.masked_lm`)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoTokenizer,
)

from ..auto_registration import register_auto_classes
from ..data.collator import DataCollatorForDenoising
from ..data.corpus import load_corpus, tokenize_and_pack
from ..data.noise_config import NoiseConfig
from ..errors import CheckpointError, TokenizerError
from ..loading import load_checked
from ..metrics.masked_lm import masked_lm_metrics, pseudo_perplexity
from .results import MlmResult

register_auto_classes()  # maskae checkpoints load through the Auto classes and save with their auto_map


def evaluate_mlm(
    model: str | Path,
    corpus: str | Path,
    *,
    block_size: int = 128,
    limit: int | None = None,
    pseudo_blocks: int = 4,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Masked accuracy (15% BERT noise, seeded) and pseudo-perplexity of a masked-LM checkpoint on a
    corpus packed into blocks of `block_size` tokens. `limit` caps the blocks scored for masked
    accuracy; pseudo-perplexity masks every token of the first `pseudo_blocks` blocks one at a time
    (one forward pass per token, hence the smaller count)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError) as error:
        raise TokenizerError(f"cannot load a tokenizer from {str(model)!r} ({error}); save it beside the model.") from None
    blocks = tokenize_and_pack(load_corpus(corpus), tokenizer, block_size)
    if limit is not None:
        blocks = blocks.select(range(min(limit, len(blocks))))
    try:
        # An RTD model scores its generator (masked figures) and its detector (replaced_accuracy).
        rtd = getattr(AutoConfig.from_pretrained(str(model)), "objective", "mlm") == "rtd"
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load a masked-LM model from {str(model)!r} ({error}); pass a model directory.") from None
    # A sentence encoder (all-MiniLM-L6-v2, say) ships no masked-LM head: scoring a random one would report
    # a perplexity of noise, so its absence is an error.
    lm = load_checked(AutoModelForPreTraining if rtd else AutoModelForMaskedLM, model, what="a masked-LM model",
                      fix="this task needs a trained masked-LM head (a maskae run, or a *ForMaskedLM checkpoint); "
                      "evaluate a sentence encoder with --task sts or probe.")
    config = lm.config
    sentence = getattr(config, "bottleneck", None) == "sentence"
    noise = NoiseConfig(decoder_mask_prob=config.decoder_mask_prob) if sentence else NoiseConfig()
    collator = DataCollatorForDenoising(tokenizer, noise=noise, seed=seed)
    rows = [blocks[i] for i in range(len(blocks))]
    batches = [collator(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)]
    result = MlmResult({"task": "mlm", "blocks": len(rows), "block_size": block_size, **masked_lm_metrics(lm, batches)})
    if pseudo_blocks:
        ids = torch.tensor([row["input_ids"] for row in rows[:pseudo_blocks]])
        result["pseudo_blocks"] = len(ids)
        result.update(
            pseudo_perplexity(lm, ids, torch.ones_like(ids), tokenizer.mask_token_id, tokenizer.all_special_ids, batch_size)
        )
    return result
