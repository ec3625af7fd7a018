"""`maskae tokenizer train`: train a WordPiece or byte-level BPE tokenizer on a corpus."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a tokenizer for pretraining from scratch",
        description="Tokenizer utilities. `maskae tokenizer train` trains one with the `tokenizers` library.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help="train a WordPiece (default) or BPE tokenizer on a corpus",
        description=(
            "Train a tokenizer on a corpus and save it so that AutoTokenizer.from_pretrained(OUT) loads it. "
            "WordPiece gets BERT's [PAD] [UNK] [CLS] [SEP] [MASK]; BPE gets RoBERTa's <s> <pad> </s> <unk> <mask>."
        ),
        epilog="example: maskae tokenizer train --corpus data/train.txt --vocab-size 30000 --out my-tokenizer",
    )
    train.add_argument(
        "--corpus", required=True, help="a .txt/.jsonl/.csv/.tsv/.parquet file, a glob, a saved dataset or a Hub id"
    )
    train.add_argument("--vocab-size", type=int, required=True, help="number of tokens in the vocabulary, e.g. 30000")
    train.add_argument("--out", required=True, help="directory to save the tokenizer to")
    train.add_argument("--kind", choices=("wordpiece", "bpe"), default="wordpiece", help="tokenizer model (default: wordpiece)")
    train.add_argument("--cased", action="store_true", help="keep case (default: lowercase the text)")
    train.add_argument("--min-frequency", type=int, default=2, help="minimum count of a merge or piece (default: 2)")
    train.add_argument("--model-max-length", type=int, default=512, help="longest input the model takes (default: 512)")
    train.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.tokenization import train_tokenizer

    tokenizer = train_tokenizer(
        args.corpus,
        args.vocab_size,
        args.out,
        kind=args.kind,
        lowercase=not args.cased,
        min_frequency=args.min_frequency,
        model_max_length=args.model_max_length,
        text_column=args.text_column,
    )
    logger.info("saved a %s tokenizer with %d tokens to %s", args.kind, len(tokenizer), args.out)
    return 0
