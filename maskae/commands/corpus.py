"""`maskae corpus OUT --add PATH ...`: one pretraining corpus from text files and the unlabelled
sentences of labelled task files (task-adaptive pretraining, Gururangan et al. 2020)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Each --add is a text corpus (copied as it is) or a task tsv, whose sentence columns (sentence, or
sentence1 and sentence2) are kept and whose labels are dropped; task sentences are deduplicated.
Give training splits only: validation and test text must not be pretrained on.
The folder is what data.train of a recipe names.

example (the corpus of recipes/quality.yaml):
  maskae corpus runs/corpora/wikitext2-glue --add ../shared/data/wikitext2/train.txt \\
      --add ../shared/data/{sst2,stsb,cola,mrpc,rte}/train.tsv
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "corpus", help="build a pretraining corpus folder from text files and task tsvs (labels dropped)",
        description="Build a pretraining corpus folder from text files and the sentences of task tsvs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="the corpus folder to write (must not exist)")
    parser.add_argument("--add", type=Path, nargs="+", action="extend", required=True, metavar="PATH",
                        help="text corpora and task tsvs (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.corpus import build_corpus_folder

    files, sentences = build_corpus_folder(args.out, args.add)
    print(f"wrote {args.out}: {files} text file(s), {sentences:,} distinct task sentences")
    return 0
