"""Time `load_corpus` + `tokenize_and_pack` on WikiText-2 train, cold and then from the datasets cache.

    python benchmarks/bench_pack.py --tokenizer PATH [--corpus FILE] [--block-size 128] [--num-proc 2]

The first run uses a fresh, empty datasets cache, so it measures the real work; the second run, in
the same cache, must be served from it (the script checks that no new cache file appeared).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "wikitext2" / "train.txt"))
    parser.add_argument("--tokenizer", required=True, help="a local tokenizer directory (e.g. all-MiniLM-L6-v2)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--num-proc", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["HF_DATASETS_CACHE"] = cache  # before datasets is imported: a cold cache
        from datasets.utils.logging import disable_progress_bar
        from transformers import AutoTokenizer

        from maskae.data.corpus import load_corpus, tokenize_and_pack

        disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        timings, files_after = [], []
        for _ in range(2):
            start = time.perf_counter()
            corpus = load_corpus(args.corpus)
            packed = tokenize_and_pack(corpus, tokenizer, args.block_size, num_proc=args.num_proc)
            timings.append(time.perf_counter() - start)
            files_after.append(sorted(str(p) for p in Path(cache).rglob("*.arrow")))

        words = sum(len(text.split()) for text in corpus["text"])
        print(json.dumps({
            "corpus": args.corpus,
            "rows": len(corpus),
            "words": words,
            "block_size": args.block_size,
            "blocks": len(packed),
            "tokens_packed": len(packed) * args.block_size,
            "num_proc": args.num_proc,
            "cold_seconds": round(timings[0], 2),
            "cached_seconds": round(timings[1], 2),
            "second_run_hit_cache": files_after[0] == files_after[1],
            "cpu_count": os.cpu_count(),
        }, indent=2))


if __name__ == "__main__":
    main()
