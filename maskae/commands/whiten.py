"""`maskae whiten MODEL --corpus PATH`: fit a whitening on unlabelled text and store it with the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..embeddings.choices import SENTENCE_POOLINGS
from ..embeddings.whitening import DEFAULT_MAX_TEXTS
from ..errors import CheckpointError

EPILOG = """\
Whitening (Su et al. 2021; WhiteningBERT) subtracts the mean of the pooled embeddings and rotates and
rescales them to identity covariance; --dim keeps only the top directions. It needs no labels but is
domain-sensitive: fit it on text like the text you will embed (e.g. a task's own unlabelled training
sentences), not on an unrelated corpus. `maskae embed`, `maskae evaluate` and the exports then apply
it whenever they embed with the same layer and pooling (`maskae embed --no-whiten` skips it).

examples:
  maskae whiten runs/tiny-wikitext2 --corpus ../shared/data/stsb/train.tsv
  maskae whiten my-minilm --corpus corpus.txt --layer 3 --dim 128
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "whiten",
        help="fit a whitening of the embeddings on unlabelled text and save it with the model",
        description="Fit a whitening on MODEL's pooled embeddings of --corpus and write whitening.safetensors "
        "into MODEL (recorded in its config.json).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", type=Path, help="model directory (MaskAE or stock encoder)")
    parser.add_argument(
        "--corpus", required=True,
        help="unlabelled text: a task tsv (its sentence / sentence1 / sentence2 columns), or a .txt/.jsonl/.csv/"
        ".parquet file, a glob, a saved dataset or a Hub id",
    )
    parser.add_argument("--dim", type=int, help="keep the top D directions (default: every direction the texts vary in)")
    parser.add_argument("--layer", type=int, help="hidden state k to whiten (default: a MaskAE code, else the last layer)")
    parser.add_argument("--pooling", choices=SENTENCE_POOLINGS, default="mean",
                        help="how token vectors become one sentence vector (default: mean)")
    parser.add_argument("--max-texts", type=int, default=DEFAULT_MAX_TEXTS,
                        help=f"fit on a seeded sample of at most N texts (default: {DEFAULT_MAX_TEXTS})")
    parser.add_argument("--text-column", default="text", help="column holding the text (not for .txt or task tsv)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.corpus import corpus_texts
    from ..embeddings.embedder import Embedder, fit_whitening

    if not (args.model / "config.json").is_file():
        raise CheckpointError(f"{str(args.model)!r} has no config.json; pass a local model directory to write into.")
    texts = corpus_texts(args.corpus, args.max_texts, args.text_column)
    embedder = Embedder.from_pretrained(args.model)
    whitening = fit_whitening(embedder, texts, dim=args.dim, layer=args.layer, pooling=args.pooling,
                              batch_size=args.batch_size)
    path = whitening.save(args.model)
    width = whitening.matrix.shape[0]
    layer = "the code" if args.layer is None and embedder.is_maskae else f"layer {args.layer if args.layer is not None else embedder.num_layers}"
    print(f"fitted on {len(texts)} texts ({layer}, {args.pooling} pooling, {width} -> {whitening.dim} dims); wrote {path}")
    return 0
