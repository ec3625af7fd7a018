"""The embedding results table: STS-B test Spearman x100 and SST-2 validation probe accuracy x100 at
several label budgets, for any model directories plus the classic linear baselines of the same width.

    python benchmarks/eval_table.py sentence-transformers/all-MiniLM-L6-v2@3 sentence-transformers/all-MiniLM-L6-v2 \
        --lsa 384 --lsa 64 --pca runs/proj64:64 runs/proj64 --max-train 10000 --output table.json

A model row is [NAME=]PATH (its code, or a stock model's last layer) or [NAME=]PATH@LAYER; `--lsa D` adds a TF-IDF +
truncated SVD row of width D; `--pca PATH[@LAYER]:D` adds PCA-D of that model's full-width
embeddings (its top encoder layer before any bottleneck, or LAYER). LSA and PCA are fitted on the
sentences being embedded (STS-B test) or on the probe's training pool (SST-2), never on labels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from maskae.embeddings.embedder import Embedder  # noqa: E402
from maskae.evaluation.baselines import lsa_embeddings, pca_embeddings  # noqa: E402
from maskae.evaluation.probes import probe_accuracy, probe_pool  # noqa: E402
from maskae.evaluation.sts import sts_spearman  # noqa: E402
from maskae.evaluation.tasks import budget_name, parse_budgets, read_labelled, read_sts  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_model(spec: str) -> tuple[str, str, int | None]:
    """[NAME=]PATH[@LAYER] -> (row name, path, layer)."""
    name, _, spec = spec.rpartition("=")
    path, _, layer = spec.rpartition("@") if "@" in spec else (spec, "", "")
    layer = int(layer) if layer else None
    return name or Path(path).name + ("" if layer is None else f" layer {layer}"), path, layer


class Tasks:
    """The evaluation texts, read once; `score` turns a function texts -> vectors into the row's figures."""

    def __init__(self, data: Path, max_train: int | None, budgets, seeds):
        self.first, self.second, self.gold = read_sts(data / "stsb" / "test.tsv")
        self.train_texts, self.train_labels = probe_pool(*read_labelled(data / "sst2" / "train.tsv"), max_train)
        self.eval_texts, self.eval_labels = read_labelled(data / "sst2" / "validation.tsv")
        self.budgets, self.seeds = budgets, seeds

    @property
    def sts_texts(self) -> list[str]:
        return self.first + self.second

    def score(self, sts_vectors: np.ndarray, train_vectors: np.ndarray, eval_vectors: np.ndarray) -> dict:
        n = len(self.first)
        return {
            "dim": int(sts_vectors.shape[1]),
            "stsb_test_spearman_x100": 100 * sts_spearman(sts_vectors[:n], sts_vectors[n:], self.gold),
            "sst2_probe": probe_accuracy(
                train_vectors, self.train_labels, eval_vectors, self.eval_labels, self.budgets, self.seeds
            ),
        }


class Embeddings:
    """Loads each model once and embeds each (model, layer) once: a PCA row reuses its model row's vectors."""

    def __init__(self, tasks: Tasks, batch_size: int):
        self.tasks, self.batch_size = tasks, batch_size
        self.embedders: dict[str, Embedder] = {}
        self.vectors: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __call__(self, path: str, layer: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(STS-B test, SST-2 pool, SST-2 validation) vectors at `layer` (None: the code)."""
        embedder = self.embedder(path)
        key = (path, None if embedder.resolve_layers(layer) is None else tuple(embedder.resolve_layers(layer)))
        if key not in self.vectors:
            texts = (self.tasks.sts_texts, self.tasks.train_texts, self.tasks.eval_texts)
            self.vectors[key] = tuple(embedder.embed(t, layer=layer, batch_size=self.batch_size) for t in texts)
        return self.vectors[key]

    def embedder(self, path: str) -> Embedder:
        if path not in self.embedders:
            self.embedders[path] = Embedder.from_pretrained(path)
        return self.embedders[path]


def lsa_row(tasks: Tasks, dim: int) -> dict:
    (sts,) = lsa_embeddings(tasks.sts_texts, [tasks.sts_texts], dim)
    train, evaluation = lsa_embeddings(tasks.train_texts, [tasks.train_texts, tasks.eval_texts], dim)
    return tasks.score(sts, train, evaluation)


def pca_row(tasks: Tasks, embeddings: Embeddings, path: str, layer: int | None, dim: int) -> dict:
    """PCA-`dim` of the full-width vectors at `layer`, or at the top encoder layer (before any bottleneck)."""
    sts, train, evaluation = embeddings(path, embeddings.embedder(path).num_layers if layer is None else layer)
    (sts_reduced,) = pca_embeddings(sts, [sts], dim)
    train_reduced, eval_reduced = pca_embeddings(train, [train, evaluation], dim)
    return tasks.score(sts_reduced, train_reduced, eval_reduced)


def markdown(rows: list[dict], train_pool: int) -> str:
    budgets = [b["budget"] for b in rows[0]["sst2_probe"]]
    names = [f"{b} labels" if b != "all" else f"all ({train_pool:,}) labels" for b in budgets]
    lines = [
        "| embeddings | dim | STS-B test Spearman x100 | " + " | ".join(f"SST-2 acc x100, {n}" for n in names) + " |",
        "|---|---:|---:|" + "---:|" * len(budgets),
    ]
    for row in rows:
        cells = [f"{b['accuracy_x100']:.2f} ± {b['std_x100']:.2f}" if b["seeds"] > 1 else f"{b['accuracy_x100']:.2f}"
                 for b in row["sst2_probe"]]
        lines.append(f"| {row['name']} | {row['dim']} | {row['stsb_test_spearman_x100']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="[NAME=]PATH[@LAYER]", help="model rows")
    parser.add_argument("--lsa", type=int, action="append", default=[], metavar="D", help="add an LSA row of width D")
    parser.add_argument("--pca", action="append", default=[], metavar="[NAME=]PATH[@LAYER]:D", help="add a PCA-D row")
    parser.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default: {DATA})")
    parser.add_argument("--budgets", default="100,1000,all", help="SST-2 label budgets (default: 100,1000,all)")
    parser.add_argument("--seeds", type=int, default=5, help="samples per budget (default: 5)")
    parser.add_argument("--max-train", type=int, default=10000, help="SST-2 training pool, 'all' (default: 10000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    tasks = Tasks(args.data, args.max_train, parse_budgets(args.budgets), tuple(range(args.seeds)))
    embeddings = Embeddings(tasks, args.batch_size)
    jobs = [(f"LSA (TF-IDF + SVD) {d}", lambda d=d: lsa_row(tasks, d)) for d in args.lsa]
    for spec in args.models:
        name, path, layer = parse_model(spec)
        jobs.append((name, lambda p=path, k=layer: tasks.score(*embeddings(p, k))))
    for spec in args.pca:
        model, _, dim = spec.rpartition(":")
        name, path, layer = parse_model(model)
        name = f"PCA-{dim} of {name}"
        jobs.append((name, lambda p=path, k=layer, d=int(dim): pca_row(tasks, embeddings, p, k, d)))

    rows = []
    for name, job in jobs:
        start = time.perf_counter()
        rows.append({"name": name, **job(), "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name}: done in {rows[-1]['seconds']} s", file=sys.stderr)
    print(markdown(rows, len(tasks.train_texts)))
    print(
        f"\nSTS-B test: {len(tasks.first)} pairs. SST-2: probe accuracy on the {len(tasks.eval_texts)} validation "
        f"sentences; budgets {', '.join(budget_name(b) for b in tasks.budgets)} drawn stratified from a pool of "
        f"{len(tasks.train_texts)} training sentences, mean ± std over {args.seeds} seeds ('all' is fitted once)."
    )
    if args.output:
        args.output.write_text(json.dumps({"train_pool": len(tasks.train_texts), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
