"""`maskae index VECTORS --out DIR`: a FAISS index of what `maskae embed` wrote, with the texts' row ids."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
The index type follows the vectors' precision: float vectors are searched by cosine, int8 ones with
FAISS's 8-bit scalar quantiser, binary ones by Hamming distance on the packed bits. flat is exact;
hnsw (a graph) and ivf (inverted lists) are approximate and fast on large corpora.

examples:
  maskae embed my-model --input corpus.txt --output vectors.npy --precision int8
  maskae index vectors.npy --out corpus-index --kind hnsw
  maskae search corpus-index "how do I reset my password" --k 5
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build a FAISS index (flat, hnsw or ivf) from the vectors maskae embed wrote",
        description="Index the vectors that maskae embed wrote to VECTORS (any format and precision) into the "
        "directory --out, with the texts they came from, for maskae search (pip install 'maskae[search]').",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("vectors", metavar="VECTORS", help="the --output of a maskae embed run (.npy, .parquet or a "
                        "directory), with its record beside it")
    parser.add_argument("--out", required=True, type=Path, help="index directory to write")
    parser.add_argument("--kind", choices=("flat", "hnsw", "ivf"), default="flat",
                        help="flat (exact), hnsw or ivf (approximate) (default: flat)")
    parser.add_argument("--texts", default=None, help="the corpus that was embedded, if it moved (default: the input "
                        "the vectors record)")
    parser.add_argument("--text-column", default=None, help="its text column (default: the one the vectors record)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.index import build_index

    rows = build_index(args.vectors, args.out, args.kind, texts=args.texts, text_column=args.text_column,
                       overwrite=args.overwrite)
    print(f"indexed {rows} vectors ({args.kind}) in {args.out}")
    return 0
