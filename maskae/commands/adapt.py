"""`maskae adapt MODEL --corpus PATH --out RUN --objective distill --layer K`: make layer K of an existing
encoder worth choosing, on the user's own unlabelled text."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

OBJECTIVES = ("distill",)

EPILOG = """\
distill: the first K layers of MODEL (K = 0: its embedding layer alone, a static embedding) learn to give
MODEL's own sentence embedding (its pooled last layer) of every sentence of --corpus; the layers above K
stay frozen, as the decoder. The teacher's embeddings of the corpus are computed once and cached
(distill.teacher_cache). Every --eval-steps the student is scored without labels, by its mean cosine to
the teacher on held-out sentences (data.validation, else the last data.validation_fraction of the
corpus); the best model by that score is what RUN holds at the end (RUN/eval_results.json says which
step). RUN is an ordinary MaskAE run whose code is layer K: embed, evaluate, whiten and export take it.

The recipe underneath is recipes/adapt-distill.yaml (K >= 1) or recipes/adapt-static.yaml (K = 0);
--recipe names another, and --set section.key=value overrides any key (`maskae train --help` lists
them, the distill section included).

examples:
  maskae adapt sentence-transformers/all-MiniLM-L6-v2 --corpus stsb/train.tsv --out runs/minilm-l3 --layer 3 --minutes 10
  maskae adapt sentence-transformers/all-MiniLM-L6-v2 --corpus my-corpus.txt --out runs/minilm-static --layer 0 --steps 3000
  maskae embed runs/minilm-l3 --input texts.txt --output vectors.npy    # layer 3, the run's code
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt",
        help="adapt an existing encoder to your text: distil its embedding into its first K layers",
        description="Adapt MODEL (a local directory or Hub id) on unlabelled text: with --objective distill, "
        "its first K layers learn its own final sentence embedding, so that layer K is a cheaper embedding of "
        "nearly the same quality.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="the encoder to adapt (and the teacher): directory or Hub id")
    parser.add_argument("--corpus", required=True, nargs="+", metavar="PATH",
                        help="unlabelled text: task tsv files (their sentence columns), .txt/.jsonl/.csv/.parquet "
                        "files, globs, saved datasets or Hub ids")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN", help="output directory of the run")
    parser.add_argument("--objective", choices=OBJECTIVES, default="distill", help="what to adapt for (default: distill)")
    parser.add_argument("--layer", type=int, required=True, metavar="K",
                        help="depth of the student: its code is layer K (0 = the embedding layer alone)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="train for at most this many minutes, within the recipe's "
                        "training.max_steps (the best step is kept)")
    budget.add_argument("--steps", type=int, help="train for this many optimizer steps (default: the recipe's)")
    parser.add_argument("--recipe", type=Path, help="recipe to start from (default: recipes/adapt-distill.yaml, or "
                        "adapt-static.yaml for --layer 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one recipe key (repeatable), e.g. --set training.lr=1e-4")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in RUN")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.run import distill  # torch and friends load only when training

    for name in ("accelerate.accelerator", "accelerate.checkpointing"):  # one line per saved file otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    results = distill(args.model, args.corpus, args.out, args.layer, minutes=args.minutes, steps=args.steps,
                      overrides=args.overrides, recipe=args.recipe, resume=args.resume)
    print(f"kept step {results.get('best_step')}: cosine to the teacher {results['teacher_cosine']:.4f} on held-out "
          f"text, {results['speedup_vs_teacher']:.1f}x its speed; embed it with: maskae embed {args.out} --input ...")
    return 0
