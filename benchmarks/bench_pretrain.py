"""Pretraining ablation: which levers make a small CPU-trained encoder beat random initialisation and LSA
with few labels.

Every row is the reference configuration (`recipes/tiny-wikitext2.yaml` with the REFERENCE overrides
below) with one lever changed, trained for the same budget of CPU time, then scored on the same
downstream figures:

- STS-B test Spearman x100 of the code's mean-pooled vectors, raw and whitened (the whitening fitted on
  lines of the row's own training corpus: no labels, no test text);
- SST-2 validation accuracy x100 of a logistic-regression probe on frozen vectors, 100 and 1,000 labels;
- SST-2 validation accuracy x100 after fine-tuning the encoder on 1,000 labels (`maskae.evaluation.finetuning`), and
  the same network from random initialisation under the same protocol.

The budget is CPU seconds of the training process (`time.process_time`), not wall-clock time, so that other
jobs on a shared machine do not shorten a row: each row first times a few steps of its own configuration,
then trains for as many steps as fit the budget, with its learning-rate schedule scaled to them.

    python benchmarks/bench_pretrain.py --out runs/bench-pretrain                  # every row
    python benchmarks/bench_pretrain.py --out runs/bench-pretrain --rows reference,"mask 15%"
    python benchmarks/bench_pretrain.py --out runs/bench-pretrain --budget-cpu-s 600 --threads 2

Rows that already have a trained model in --out are only scored again, so an interrupted run continues.
The corpora are built from ../shared/data: WikiText-2 train, and the unlabelled sentences of the GLUE
training splits (task-adaptive pretraining, Gururangan et al. 2020); validation and test text is never read
for training.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from maskae.data.corpus import build_corpus_folder, corpus_texts, default_corpus
from maskae.data.tokenization import train_tokenizer
from maskae.training.recipe import load_recipe
from maskae.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RECIPE = REPO / "recipes" / "tiny-wikitext2.yaml"

# The reference every row changes one lever of: recipes/tiny-wikitext2.yaml as it is (the packaged corpus:
# a WikiText-2 excerpt and unlabelled SST-2 / STS-B training sentences; 30% masking).
REFERENCE = {"corpus": "packaged", "vocab": 8000, "set": []}

ROWS: dict[str, dict] = {
    "reference": {},
    # data
    "WikiText-2 excerpt only (the old default)": {"corpus": "excerpt"},
    "full WikiText-2 + all GLUE train sentences": {"corpus": "wikitext2+tasks"},
    # noise
    "mask 15% (BERT)": {"set": ["noise.mask_prob=0.15"]},
    "mask 40%": {"set": ["noise.mask_prob=0.4"]},
    "whole-word masking": {"set": ["noise.whole_word=true"]},
    "span masking (Poisson 3)": {"set": ["noise.span_lambda=3"]},
    # shape and split at equal compute
    "split 1 + 3": {"set": ["model.split_layer=1"]},
    "linear decoder (4 + head, classic BERT)": {"set": ["model.split_layer=4", "model.decoder=linear"]},
    "deep-narrow: 8 layers x 96": {"set": ["model.num_layers=8", "model.split_layer=4", "model.hidden_size=96",
                                          "model.num_heads=4", "model.intermediate_size=384"]},
    "shallow-wide: 2 layers x 256": {"set": ["model.num_layers=2", "model.split_layer=1", "model.hidden_size=256",
                                            "model.intermediate_size=1024"]},
    # vocabulary, schedule, length
    "vocabulary 16,000": {"vocab": 16000},
    "one-cycle schedule (peak at half)": {"warmup_share": 0.5},
    "sequence 64": {"set": ["data.block_size=64"]},
    # objectives and growth
    "sentence bottleneck (TSDAE/RetroMAE)": {"set": [
        "model.split_layer=3", "model.decoder=transformer", "model.decoder_layers=1", "model.bottleneck=sentence",
        "noise.delete_prob=0.1", "noise.decoder_mask_prob=0.5"]},
    # the stock classifier reads [CLS]: make [CLS] the sentence code that the decoder must reconstruct from
    "sentence bottleneck with [CLS] as the code (RetroMAE)": {"set": [
        "model.split_layer=3", "model.decoder=transformer", "model.decoder_layers=1", "model.bottleneck=sentence",
        "model.pooling=cls", "noise.delete_prob=0.1", "noise.decoder_mask_prob=0.5"]},
    "progressive stacking (1 -> 2)": {"set": ["growth.stages=[{layers: 1, share: 0.5}, {layers: 2, share: 0.5}]"]},
    # ELECTRA's settings: 15% of the tokens, all [MASK] for the generator, a generator a quarter as wide
    "replaced-token detection (ELECTRA)": {"set": ["model.objective=rtd", "noise.mask_prob=0.15",
                                                   "noise.mask_token_frac=1.0", "noise.random_token_frac=0.0"]},
    # the 32-wide generator above stays at the unigram: a generator half as wide as the detector
    "replaced-token detection, generator 64 wide": {"set": [
        "model.objective=rtd", "model.generator_hidden_size=64", "noise.mask_prob=0.15",
        "noise.mask_token_frac=1.0", "noise.random_token_frac=0.0"]},
}
WARMUP_SHARE = 100 / 1200  # the tiny recipe's warm-up share
CALIBRATION_STEPS = (3, 13)  # time steps 3..13 of a row's configuration (the first steps warm caches up)


# ---------------------------------------------------------------- corpora


TASKS = ("sst2", "stsb", "cola", "mrpc", "rte")


def build_corpus(name: str, out: Path) -> str | None:
    """The corpus `name` as a path for data.train (None = the packaged corpus)."""
    if name == "packaged":
        return None
    if name == "excerpt":
        return str(default_corpus("train"))
    folder = out / "corpora" / name
    if not folder.is_dir():
        tasks = [DATA / task / "train.tsv" for task in TASKS] if "tasks" in name else []
        build_corpus_folder(folder, [DATA / "wikitext2" / "train.txt", *tasks])
    return str(folder)


# ---------------------------------------------------------------- training


class Calibration(Trainer):
    """Times CALIBRATION_STEPS of a configuration in CPU seconds per step, then stops."""

    def on_step_end(self) -> None:
        super().on_step_end()
        first, last = CALIBRATION_STEPS
        if self.state.step == first:
            self.cpu_start = time.process_time()
        if self.state.step == last:
            self.cpu_per_step = (time.process_time() - self.cpu_start) / (last - first)
            self.args.max_steps = last

    def save_final(self, results: dict[str, float]) -> None:
        """A calibration run keeps nothing."""


def row_overrides(row: dict, tokenizer: Path, corpus: str | None) -> list[str]:
    settings = [*REFERENCE["set"], *row.get("set", [])]
    return [*settings, f"tokenizer.path={tokenizer}", "tokenizer.train=null",
            f"data.train={'null' if corpus is None else corpus}", "training.eval_steps=null",
            "training.save_steps=1000000", "training.pseudo_perplexity_blocks=0", "training.logging_steps=50"]


def train_row(name: str, row: dict, out: Path, budget_cpu_s: float) -> dict:
    """Calibrate, then train the row for the steps that fit the budget; returns the row's training facts."""
    corpus_name = row.get("corpus", REFERENCE["corpus"])
    vocab = row.get("vocab", REFERENCE["vocab"])
    corpus = build_corpus(corpus_name, out)
    tokenizer = out / "tokenizers" / f"{corpus_name}-{vocab}"
    if not (tokenizer / "tokenizer.json").is_file():
        train_tokenizer(corpus or str(default_corpus("pretraining")), vocab_size=vocab, out_dir=tokenizer)
    overrides = row_overrides(row, tokenizer, corpus)
    calibration_dir = out / "calibration"
    shutil.rmtree(calibration_dir, ignore_errors=True)
    probe = Calibration(load_recipe(RECIPE, [*overrides, f"training.max_steps={CALIBRATION_STEPS[1] + 1}"]),
                        calibration_dir)
    probe.train()
    shutil.rmtree(calibration_dir, ignore_errors=True)
    steps = max(int(budget_cpu_s / probe.cpu_per_step), 20)
    warmup = int(steps * row.get("warmup_share", WARMUP_SHARE))
    recipe = load_recipe(RECIPE, [*overrides, f"training.max_steps={steps}", f"training.warmup_steps={warmup}"])
    started = time.process_time()
    results = Trainer(recipe, out / "rows" / slug(name)).train()
    return {"steps": steps, "cpu_per_step_s": probe.cpu_per_step, "train_cpu_s": time.process_time() - started,
            "masked_accuracy": results.get("masked_accuracy"), "replaced_accuracy": results.get("replaced_accuracy"),
            "corpus": corpus_name, "vocab": vocab,
            "overrides": overrides}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# ---------------------------------------------------------------- scoring


def score_row(model_dir: Path, corpus: str | None, seeds: int, whiten_lines: int) -> dict:
    """The downstream figures of one trained row (see the module docstring)."""
    from maskae.embeddings.embedder import Embedder
    from maskae.embeddings.embedder import fit_whitening
    from maskae.evaluation.finetuning import evaluate_finetune
    from maskae.evaluation.probes import probe_accuracy, probe_pool
    from maskae.evaluation.sts import sts_spearman
    from maskae.evaluation.tasks import read_labelled, read_sts

    embedder = Embedder.from_pretrained(model_dir)
    first, second, gold = read_sts(DATA / "stsb" / "test.tsv")
    n = len(first)
    raw = embedder.embed(first + second, pooling="mean", whiten=False)
    whitening = fit_whitening(embedder, corpus_texts(corpus or default_corpus("pretraining"), whiten_lines))
    white = whitening.apply(raw)
    figures = {"sts_raw": 100 * sts_spearman(raw[:n], raw[n:], gold),
               "sts_whitened": 100 * sts_spearman(white[:n], white[n:], gold)}
    pool_texts, pool_labels = probe_pool(*read_labelled(DATA / "sst2" / "train.tsv"), 10000)
    eval_texts, eval_labels = read_labelled(DATA / "sst2" / "validation.tsv")
    probes = probe_accuracy(embedder.embed(pool_texts, pooling="mean", whiten=False), pool_labels,
                            embedder.embed(eval_texts, pooling="mean", whiten=False), eval_labels,
                            (100, 1000), tuple(range(seeds)))
    figures.update({f"probe_{p['budget']}": p["accuracy_x100"] for p in probes})
    tuned = evaluate_finetune(model_dir, DATA / "sst2", budgets=(1000,), seeds=tuple(range(seeds)), baseline=True)
    figures["finetune_1000"] = tuned["budgets"][0]["score_x100"]
    figures["random_init_1000"] = tuned["baselines"]["random_init"]["budgets"][0]["score_x100"]
    figures["lsa_1000"] = tuned["baselines"]["lsa"]["budgets"][0]["score_x100"]
    return figures


COLUMNS = [("sts_raw", "STS-B raw"), ("sts_whitened", "STS-B whitened"), ("probe_100", "SST-2 probe 100"),
           ("probe_1000", "probe 1k"), ("finetune_1000", "SST-2 fine-tuned 1k"),
           ("random_init_1000", "same net, random init, 1k"), ("lsa_1000", "LSA + logistic regression, 1k"),
           ("masked_accuracy", "masked acc."), ("steps", "steps")]


def table(results: dict[str, dict]) -> str:
    lines = ["| row | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, figures in results.items():
        cells = []
        for key, _ in COLUMNS:
            value = figures.get(key)
            cells.append("" if value is None else f"{value:.4f}" if key == "masked_accuracy"
                         else f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-pretrain"), help="output directory")
    parser.add_argument("--rows", help="row names separated by semicolons (default: every row); see ROWS in this file")
    parser.add_argument("--budget-cpu-s", type=float, default=100.0,
                        help="CPU seconds of training per row (default 100: under 2 minutes on one idle thread)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seeds", type=int, default=1, help="label samples per budget (default 1)")
    parser.add_argument("--whiten-lines", type=int, default=10000, help="corpus lines the whitening is fitted on")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    names = list(ROWS) if args.rows is None else [n.strip() for n in args.rows.split(";") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose among {list(ROWS)}")

    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "ablation.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name in names:
        model_dir = args.out / "rows" / slug(name)
        if name not in summary or not (model_dir / "config.json").is_file():
            shutil.rmtree(model_dir, ignore_errors=True)
            print(f"== {name}: training", flush=True)
            summary[name] = train_row(name, ROWS[name], args.out, args.budget_cpu_s)
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        if "sts_whitened" not in summary[name]:
            print(f"== {name}: scoring", flush=True)
            started = time.perf_counter()
            corpus = build_corpus(ROWS[name].get("corpus", REFERENCE["corpus"]), args.out)
            summary[name].update(score_row(model_dir, corpus, args.seeds, args.whiten_lines))
            summary[name]["score_wall_s"] = time.perf_counter() - started
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(table({name: summary[name]}).splitlines()[-1], flush=True)
    print(f"\nbudget {args.budget_cpu_s:g} CPU s per row, {args.threads} thread(s); {args.seeds} label samples per budget")
    print(table({name: summary[name] for name in names}))


if __name__ == "__main__":
    main()
