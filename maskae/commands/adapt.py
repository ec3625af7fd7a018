"""`maskae adapt MODEL --corpus PATH --out RUN --objective mlm|tsdae|distill [--layer K]`: make an existing
encoder better on the user's own unlabelled text, or its layer K worth choosing."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..training.recipe import ADAPT_OBJECTIVES

EPILOG = """\
mlm: continued masked-token reconstruction through MODEL's own layers above K and its MLM head (K: --layer,
default the last layer). The checkpoint's missing parts (a sentence encoder ships no MLM head) train alone
first (adapt.head_warmup_steps), then everything at a low rate. An anchor keeps the pooled code close to
the frozen original's on the same input (adapt.anchor_weight; adapt.l2_weight and adapt.freeze_* add
others). Every --eval-steps, held-out sentences give a label-free signal: the reconstruction loss, the
cosine of their embeddings to the original's, and their isotropy; the kept model is the lowest loss among
the evaluations that keep adapt.min_original_cosine (RUN/eval_results.json says which step).

tsdae: TSDAE from the checkpoint: the encoder reads the sentence with about 60% of its tokens deleted and
gives one pooled vector; a decoder copied from MODEL's top layer reconstructs a masked copy from it. The
warm-up, anchor, signal and kept model are mlm's.

distill: the first K layers of MODEL (K = 0: its embedding layer alone, a static embedding) learn to give
MODEL's own sentence embedding (its pooled last layer) of every sentence of --corpus; the layers above K
stay frozen, as the decoder. The teacher's embeddings of the corpus are computed once and cached
(distill.teacher_cache). Every --eval-steps the student is scored without labels, by its mean cosine to
the teacher on held-out sentences (data.validation, else the last data.validation_fraction of the
corpus); the best model by that score is what RUN holds at the end (RUN/eval_results.json says which
step). RUN is an ordinary MaskAE run whose code is layer K: embed, evaluate, whiten and export take it.

The recipe underneath is recipes/adapt-mlm.yaml, adapt-tsdae.yaml, and for distill adapt-distill.yaml
(K >= 1) or adapt-static.yaml (K = 0); --recipe names another, and --set section.key=value overrides any
key (`maskae train --help` lists them, the adapt and distill sections included).

examples:
  maskae adapt sentence-transformers/all-MiniLM-L6-v2 --corpus my-domain.txt --out runs/minilm-mlm --objective mlm
  maskae adapt sentence-transformers/all-MiniLM-L6-v2 --corpus my-domain.txt --out runs/minilm-tsdae --objective tsdae
  maskae adapt sentence-transformers/all-MiniLM-L6-v2 --corpus stsb/train.tsv --out runs/minilm-l3 --objective distill --layer 3 --minutes 10
  maskae adapt sentence-transformers/all-MiniLM-L6-v2 --corpus my-corpus.txt --out runs/minilm-static --objective distill --layer 0 --steps 3000
  maskae embed runs/minilm-l3 --input texts.txt --output vectors.npy    # layer 3, the run's code
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt",
        help="adapt an existing encoder to your text: continued MLM or TSDAE, or distil it into its first K layers",
        description="Adapt MODEL (a local directory or Hub id) on unlabelled text: --objective mlm or tsdae continue "
        "denoising, anchored against forgetting, with a label-free choice of the kept step; --objective distill "
        "teaches its first K layers its own final sentence embedding, so that layer K is a cheaper embedding of "
        "nearly the same quality.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="the encoder to adapt (and the teacher): directory or Hub id")
    parser.add_argument("--corpus", required=True, nargs="+", metavar="PATH",
                        help="unlabelled text: task tsv files (their sentence columns), .txt/.jsonl/.csv/.parquet "
                        "files, globs, saved datasets or Hub ids")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN", help="output directory of the run")
    parser.add_argument("--objective", choices=ADAPT_OBJECTIVES, default="distill",
                        help="distill (layer K learns the model's own embedding; needs --layer), mlm (continued "
                        "masking) or tsdae (deletion and a sentence bottleneck) (default: distill)")
    parser.add_argument("--layer", type=int, metavar="K",
                        help="the code is layer K (0 = the embedding layer alone); distill needs it, mlm and tsdae "
                        "default to the last layer")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="train for at most this many minutes, within the recipe's "
                        "training.max_steps (the best step is kept)")
    budget.add_argument("--steps", type=int, help="train for this many optimizer steps (default: the recipe's)")
    parser.add_argument("--recipe", type=Path, help="recipe to start from (default: recipes/adapt-<objective>.yaml; "
                        "for distill adapt-distill.yaml, or adapt-static.yaml at --layer 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one recipe key (repeatable), e.g. --set training.lr=1e-4")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in RUN")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.run import adapt  # torch and friends load only when training

    for name in ("accelerate.accelerator", "accelerate.checkpointing"):  # one line per saved file otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    results = adapt(args.model, args.corpus, args.out, args.objective, args.layer, minutes=args.minutes,
                    steps=args.steps, overrides=args.overrides, recipe=args.recipe, resume=args.resume)
    if args.objective == "distill":
        print(f"kept step {results.get('best_step')}: cosine to the teacher {results['teacher_cosine']:.4f} on held-out "
              f"text, {results['speedup_vs_teacher']:.1f}x its speed; embed it with: maskae embed {args.out} --input ...")
    else:
        print(f"kept step {results['best_step']}: held-out masked loss {results['masked_loss']:.4f}, cosine to the "
              f"original {results['original_cosine']:.4f}; embed it with: maskae embed {args.out} --input ...")
    return 0
