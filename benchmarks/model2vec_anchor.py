"""Distil a model2vec static model from a local teacher, as an anchor for the benchmarks.

model2vec's `distill` extra pins transformers<5.4, which the project's environment does not meet, so the
benchmark runs this script with a second environment's python; it then loads the saved directory in its
own process with model2vec's `StaticModel`, which needs no transformers.

    python benchmarks/model2vec_anchor.py --teacher PATH --out DIR [--pca-dims 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="local path of the teacher (a transformers model directory)")
    parser.add_argument("--out", required=True, help="directory to save the distilled StaticModel to")
    parser.add_argument("--pca-dims", type=int, default=256, help="PCA output dimensions (default: 256)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the teacher is local; never reach for the Hub
    from model2vec.distill import distill

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    start = time.perf_counter()
    model = distill(model_name=args.teacher, pca_dims=args.pca_dims)
    seconds = time.perf_counter() - start

    model.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)

    record = {
        "teacher": args.teacher,
        "pca_dims": args.pca_dims,
        "distill_seconds": round(seconds, 2),
        "model2vec_version": version("model2vec"),
        "transformers_version": version("transformers"),
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
