"""`maskae train RECIPE.yaml`: train a masked text autoencoder from a recipe."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..training.recipe import format_keys, load_recipe

EPILOG = f"""\
Every recipe key, with its default (override any of them with --set section.key=value):

{format_keys()}

Output directory: log.jsonl (one line per logging step: step, loss, lr, tokens_per_s, grad_norm),
eval_log.jsonl, checkpoint-<step>/ (written atomically; the newest training.save_total_limit are
kept), and at the end the model (save_pretrained), its tokenizer, recipe.yaml and eval_results.json.

Multi-process: accelerate launch --config_file recipes/accelerate/ddp.yaml -m maskae train RECIPE.yaml (GPUs);
ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m maskae train RECIPE.yaml (CPUs)

Preemption: SIGTERM (a cluster's or cloud's stop) or Ctrl-C finishes the current step, writes a
checkpoint and exits with 143 (SIGTERM) or 130 (SIGINT); --resume then continues bit-exactly. A second
signal exits at once (the last complete checkpoint stays whole).

Security: --resume loads optimizer, scheduler and RNG states with torch.load(weights_only=True) and the
step counter from JSON: a checkpoint cannot run code, whatever torch version.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML recipe",
        description="Train a masked text autoencoder from a YAML recipe (see recipes/), on CPU, one GPU, "
        "or many through `accelerate launch -m maskae train ...`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", type=Path, help="YAML recipe file, e.g. recipes/tiny-wikitext2.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one recipe key (repeatable), e.g. --set training.lr=3e-4 --set model.split_layer=4",
    )
    parser.add_argument("--output-dir", type=Path, help="output directory (overrides training.output_dir)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in the output directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.run import train  # torch and friends load only when training

    for name in ("accelerate.accelerator", "accelerate.checkpointing"):  # one line per saved file otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    recipe = load_recipe(args.recipe, args.overrides)
    output_dir = args.output_dir or recipe.training.output_dir or Path("runs") / args.recipe.stem
    recipe.training.output_dir = str(output_dir)
    train(recipe, output_dir, resume=args.resume)
    return 0
