"""`maskae search DIR "query"`: the texts nearest to a query in an index that `maskae index` built."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="print the texts of an index nearest to a query",
        description="Embed QUERY as the indexed corpus was embedded (same model, layer, pooling, whitening, --dim "
        "and precision, read from the index) and print the K nearest texts: rank, score (cosine, or Hamming "
        "distance for binary vectors), row id and text.",
        epilog='example: maskae search corpus-index "a man is playing a guitar" --k 5',
    )
    parser.add_argument("index", metavar="DIR", help="index directory from maskae index")
    parser.add_argument("query", metavar="QUERY", nargs="+", help="query text(s)")
    parser.add_argument("--k", type=int, default=10, help="results per query (default: 10)")
    parser.add_argument("--model", default=None, help="the model to embed queries with, if it moved (default: the "
                        "one that embedded the corpus; it must give vectors as wide)")
    parser.add_argument("--device", default=None, help="torch device for the query encoder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.index import SearchIndex

    index = SearchIndex.load(args.index, model=args.model, device=args.device)
    for query, hits in zip(args.query, index.search(args.query, args.k)):
        if len(args.query) > 1:
            print(f"# {query}")
        for rank, hit in enumerate(hits, 1):
            text = " ".join((hit.text or "").split())
            score = f"{hit.score:.0f}" if index.quantizer.precision == "binary" else f"{hit.score:.4f}"
            print(f"{rank}\t{score}\t{hit.row}\t{text}")
    return 0
