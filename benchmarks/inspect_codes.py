"""Diagnostics of trained encoders that the ablation's scores alone do not explain.

For each model directory: how alike its codes are across sentences (the mean cosine between the
mean-pooled codes of two different SST-2 validation sentences, and the same for `[CLS]`; near 1 means
the code has collapsed), and, for a replaced-token detection model, how well its detector ranks
replaced tokens above original ones (ROC AUC on held-out blocks) with the generator's own samples and
with uniformly random replacements.

    python benchmarks/inspect_codes.py runs/bench-pretrain/rows/reference runs/bench-pretrain/rows/replaced-token-detection--electra
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoConfig, AutoModelForPreTraining, AutoTokenizer

from maskae import DataCollatorForDenoising, Embedder, NoiseConfig
from maskae.data.corpus import default_corpus, load_corpus, tokenize_and_pack
from maskae.evaluation.tasks import read_labelled
from maskae.modeling_maskae import IGNORE_INDEX

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def mean_cosine(vectors: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of different rows."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    n = len(unit)
    return float((similarity.sum() - np.trace(similarity)) / (n * n - n))


@torch.no_grad()
def detector_auc(model_dir: str, blocks: int, seed: int) -> tuple[float, float]:
    """(AUC on the generator's samples, AUC on uniformly random replacements) of an RTD model."""
    model = AutoModelForPreTraining.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    packed = tokenize_and_pack(load_corpus(str(default_corpus("validation"))), tokenizer, 128)
    rows = [{"input_ids": packed[i]["input_ids"]} for i in range(min(blocks, len(packed)))]
    noise = NoiseConfig(mask_prob=0.15, mask_token_frac=1.0, random_token_frac=0.0)
    batch = DataCollatorForDenoising(tokenizer, noise=noise, seed=seed)(rows)
    torch.manual_seed(seed)
    output = model(**batch)
    sampled = roc_auc_score(output.replaced_labels.flatten().numpy(), output.replaced_logits.flatten().numpy())
    targets = batch["labels"] != IGNORE_INDEX
    original = torch.where(targets, batch["labels"], batch["input_ids"])
    random_ids = original.masked_scatter(targets, torch.randint(len(tokenizer), (int(targets.sum()),)))
    logits = model.detect(random_ids, batch["attention_mask"], None, False)[0]
    uniform = roc_auc_score((random_ids != original).flatten().numpy(), logits.flatten().numpy())
    return sampled, uniform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model directories (maskae or stock encoders)")
    parser.add_argument("--sentences", type=int, default=200, help="SST-2 validation sentences compared")
    parser.add_argument("--blocks", type=int, default=64, help="held-out blocks of 128 tokens for the detector's AUC")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts, _ = read_labelled(DATA / "sst2" / "validation.tsv", limit=args.sentences)
    print("| model | mean cosine, mean-pooled codes | mean cosine, [CLS] | detector AUC, generator's samples | "
          "detector AUC, random replacements |\n|---|---:|---:|---:|---:|")
    for model_dir in args.models:
        embedder = Embedder.from_pretrained(model_dir)
        pooled = mean_cosine(embedder.embed(texts, pooling="mean", whiten=False))
        first = mean_cosine(embedder.embed(texts, pooling="cls", whiten=False))
        cells = ["", ""]
        if getattr(AutoConfig.from_pretrained(model_dir), "objective", "mlm") == "rtd":
            cells = [f"{auc:.3f}" for auc in detector_auc(model_dir, args.blocks, args.seed)]
        print(f"| {model_dir} | {pooled:.3f} | {first:.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
