"""`maskae plot MODEL --data PATH --method pca|tsne --output fig.png`: a 2-D map of the embeddings,
coloured by label, to see whether the code separates the classes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..embeddings import POOLINGS

EPILOG = """\
--data is a tsv with a header and the columns sentence and label (e.g. sst2/validation.tsv).
pca is linear and shows the global layout; tsne is non-linear and shows local neighbourhoods.

example:
  maskae plot runs/tiny --data sst2/validation.tsv --method tsne --output sst2-tsne.png
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a 2-D map (PCA or t-SNE) of a model's embeddings coloured by label",
        description="Embed the sentences of a labelled tsv and save a 2-D scatter plot coloured by label.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="model directory or Hub id (MaskAE or a stock encoder)")
    parser.add_argument("--data", required=True, type=Path, help="tsv with columns sentence and label")
    parser.add_argument("--method", choices=("pca", "tsne"), default="pca", help="2-D projection (default: pca)")
    parser.add_argument("--output", required=True, type=Path, help="where to save the PNG")
    parser.add_argument("--layer", type=int, help="hidden state k to embed with (0 = embeddings; default: the code)")
    parser.add_argument("--pooling", choices=[p for p in POOLINGS if p != "none"], default="mean",
                        help="how token vectors become one sentence vector (default: mean)")
    parser.add_argument("--limit", type=int, default=2000, help="plot at most the first N rows (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the projection (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..embeddings import embed
    from ..evaluation import read_labelled
    from ..plotting import plot_embedding_map

    texts, labels = read_labelled(args.data, args.limit)
    vectors = embed(args.model, texts, layer=args.layer, pooling=args.pooling, batch_size=args.batch_size)
    where = "code" if args.layer is None else f"layer {args.layer}"
    title = f"{Path(str(args.model)).name}, {where}: {args.method.upper()} of {len(texts)} sentences"
    output = plot_embedding_map(vectors, labels, args.output, method=args.method, title=title, seed=args.seed)
    print(f"saved {output}")
    return 0
