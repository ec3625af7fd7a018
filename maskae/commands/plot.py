"""`maskae plot MODEL --data PATH --method pca|tsne --output fig.png`: a 2-D map of the embeddings,
coloured by label, to see whether the code separates the classes; `maskae plot --log RUN [RUN ...]`:
training curves of one or more runs, to compare them; `maskae plot --frontier FILE.json`: speed against
quality for every point of benchmarks/bench_frontier.py, to pick the embedding a budget affords."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..embeddings.choices import SENTENCE_POOLINGS
from ..errors import ConfigError

EPILOG = """\
--data is a tsv with a header and the columns sentence and label (e.g. sst2/validation.tsv).
pca is linear and shows the global layout; tsne is non-linear and shows local neighbourhoods.
--log draws loss, held-out masked accuracy, learning rate and tokens/s against the step and against
wall-clock time, from each run's log.jsonl and eval_log.jsonl, one line per run.
--frontier draws quality (--quality: stsb, sst2_100 or sst2_1000) against speed for every point of a
benchmarks/bench_frontier.py --json file, and joins the points nothing beats on both axes.

examples:
  maskae plot runs/tiny --data sst2/validation.tsv --method tsne --output sst2-tsne.png
  maskae plot --log runs/tiny-wikitext2 runs/progressive --output curves.png
  maskae plot --frontier docs/frontier.json --output docs/frontier.png
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a 2-D map of a model's embeddings coloured by label, or runs' training curves (--log)",
        description="Embed the sentences of a labelled tsv and save a 2-D scatter plot coloured by label; or, "
        "with --log, draw the training curves of one or more runs on one figure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", nargs="?",
                        help="model directory or Hub id (MaskAE or a stock encoder) for an embedding map")
    parser.add_argument("--log", nargs="+", type=Path, metavar="RUN",
                        help="draw the training curves of these run directories (what `maskae train` wrote)")
    parser.add_argument("--frontier", type=Path, metavar="FILE.json",
                        help="draw the speed/quality frontier written by benchmarks/bench_frontier.py --json")
    parser.add_argument("--quality", choices=("stsb", "sst2_100", "sst2_1000"), default="stsb",
                        help="--frontier: the quality axis (default: stsb)")
    parser.add_argument("--data", type=Path, help="tsv with columns sentence and label (embedding map)")
    parser.add_argument("--method", choices=("pca", "tsne"), default="pca", help="2-D projection (default: pca)")
    parser.add_argument("--output", type=Path, help="where to save the PNG (required for a map; default with --log: "
                        "curves.png, with --frontier: frontier.png)")
    parser.add_argument("--layer", type=int, help="hidden state k to embed with (0 = embeddings; default: the code)")
    parser.add_argument("--pooling", choices=SENTENCE_POOLINGS, default="mean",
                        help="how token vectors become one sentence vector (default: mean)")
    parser.add_argument("--limit", type=int, default=2000, help="plot at most the first N rows (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the projection (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.frontier:
        return _run_frontier(args)
    if args.log:
        return _run_curves(args)
    if args.model is None or args.data is None or args.output is None:
        raise ConfigError("an embedding map needs MODEL, --data and --output (or pass --log RUN for training curves).")
    from ..embeddings.embedder import embed
    from ..evaluation.tasks import read_labelled
    from ..utils.plotting import plot_embedding_map

    texts, labels = read_labelled(args.data, args.limit)
    vectors = embed(args.model, texts, layer=args.layer, pooling=args.pooling, batch_size=args.batch_size)
    where = "code" if args.layer is None else f"layer {args.layer}"
    title = f"{Path(str(args.model)).name}, {where}: {args.method.upper()} of {len(texts)} sentences"
    output = plot_embedding_map(vectors, labels, args.output, method=args.method, title=title, seed=args.seed)
    print(f"saved {output}")
    return 0


def _run_curves(args: argparse.Namespace) -> int:
    if args.model is not None or args.data is not None:
        raise ConfigError("--log draws training curves from run directories; pass them all after --log, without "
                          "MODEL or --data.")
    from ..training.curves import plot_training_curves

    output, _ = plot_training_curves(args.log, args.output or Path("curves.png"))
    print(f"saved {output}")
    return 0


def _run_frontier(args: argparse.Namespace) -> int:
    import json

    if args.model is not None or args.data is not None or args.log:
        raise ConfigError("--frontier draws a benchmark file; pass it alone, without MODEL, --data or --log.")
    try:
        figures = json.loads(args.frontier.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the frontier file {str(args.frontier)!r} ({error}); pass the JSON that "
                          "benchmarks/bench_frontier.py --json wrote.") from None
    from ..utils.plotting import plot_frontier

    points = figures.get("points", []) if isinstance(figures, dict) else []
    title = f"measured on {figures.get('cpu') or figures.get('host', 'a CPU')}" if isinstance(figures, dict) else ""
    output = plot_frontier(points, args.output or Path("frontier.png"), quality=args.quality, title=title)
    print(f"saved {output}")
    return 0
