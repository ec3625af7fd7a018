"""`maskae evaluate MODEL --task sts|probe|mlm|layers|finetune|glue --data PATH`, or `--task mteb --tasks NAMES`:
how good are the model's embeddings, and how many labels does a task need when the encoder is fine-tuned?"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from ..embeddings.choices import DTYPES, SENTENCE_POOLINGS
from ..errors import ConfigError
from ..evaluation.schedule import describe_hyperparameters
from ..evaluation.tasks import GLUE_TASKS, task_files

TASKS = ("sts", "probe", "mlm", "layers", "finetune", "glue", "mteb")
DEFAULT_SEEDS = {"probe": 5, "finetune": 3, "glue": 3}

EPILOG = """\
tasks:
  sts     Spearman correlation x100 between the cosine similarity of each pair's embeddings and the
          gold score. --data: a tsv with a header and columns sentence1, sentence2, score.
  probe   accuracy x100 of a logistic-regression probe on frozen, standardised embeddings, for each
          label budget (a stratified sample of the training pool, averaged over --seeds seeds).
          --data: a directory holding train.tsv and validation.tsv, or the training tsv itself with
          --eval-data; columns sentence, label.
  mlm     masked accuracy (15% BERT noise, seed 0) and pseudo-perplexity (each token masked alone)
          of a masked-LM checkpoint. --data: a text corpus (.txt, .jsonl, .csv, ...), packed into
          blocks of --block-size tokens; --limit caps the blocks, --pseudo-blocks the blocks scored
          for pseudo-perplexity (one forward pass per token).
  layers  the --of figure (sts or probe) at every encoder layer (0 = embeddings), as a table and a
          PNG plot (--output), to find the layer that embeds best.
  finetune  fine-tune the stock *ForSequenceClassification of the encoder (a MaskAE model's first
          split_layer layers, exported with export_stock; --whole-stack: every layer; --layer K: the
          first K) on each label budget (--budgets, stratified seeded samples, --seeds, mean ± std) and
          score the validation split with the task's GLUE metric: Matthews correlation (CoLA),
          accuracy and F1 (MRPC), Pearson and Spearman (STS-B), accuracy (SST-2, RTE, other tasks).
          --data: a task directory with train.tsv and validation.tsv (or the training tsv with
          --eval-data, as for probe), recognised by its folder's name (cola,
          sst2, mrpc, stsb, rte) or by its columns (sentence + label; sentence1 + sentence2 + label |
          score). Pairs are fed as one pair. --baseline adds the same network from a seeded random
          initialisation, and logistic (for scores: ridge) regression on LSA features of the encoder's
          width ([a, b, |a-b|, a*b] for pairs). --save DIR keeps the classifier of the last budget's
          first seed. Fixed hyper-parameters (no tuning per model):
{hyperparameters}
  glue    finetune on each of {glue} under --data (a folder holding them), and the GLUE-style
          average (a task with two metrics counts their mean); --save DIR keeps DIR/<task>.
  mteb    the main score x100 of each MTEB task named by --tasks (comma-separated, as MTEB spells them,
          e.g. STSBenchmark,SICK-R), at --layer with --pooling and the stored whitening when it matches,
          cosine similarity, no instruction prompts. No --data: MTEB downloads each task's data from the
          Hugging Face Hub (once, then cached). --output DIR keeps MTEB's result files. Needs the mteb
          extra: pip install 'maskae[mteb]'.

--baseline adds TF-IDF + truncated SVD (LSA) and PCA of the full-width embeddings, both at width
--dim (default: the model's code width), so a bottleneck of width d meets the classic linear
reduction of the same width.

sts and probe report the raw embeddings and, beside them, the whitened ones: with the whitening
stored with the model (`maskae whiten`) when it was fitted on this --layer and --pooling, or one
fitted here on --whiten CORPUS (unlabelled text; --whiten-dim keeps the top directions). Whitening
is domain-sensitive: fit it on text like the task's (its own training sentences need no labels).

examples:
  maskae evaluate sentence-transformers/all-MiniLM-L6-v2 --task sts --data stsb/test.tsv
  maskae evaluate runs/tiny --task probe --data sst2 --budgets 100,1000,all --max-train 10000 --baseline
  maskae evaluate runs/tiny --task layers --of sts --data stsb/validation.tsv --output layers.png --json
  maskae evaluate all-MiniLM-L6-v2 --task sts --data stsb/test.tsv --layer 3 --whiten stsb/train.tsv
  maskae evaluate runs/tiny --task finetune --data sst2 --budgets 100,1000 --seeds 3 --baseline
  maskae evaluate all-MiniLM-L6-v2 --task glue --data ../shared/data --layer 3 --budgets 100,1000,all --max-train 5000
  maskae evaluate all-MiniLM-L6-v2 --task mteb --tasks STSBenchmark,SICK-R --layer 3 --output mteb-results
"""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model's embeddings: STS Spearman, few-label probes, per-layer sweeps",
        description="Score a model's embeddings (a MaskAE model directory or any stock encoder checkpoint).",
        epilog=EPILOG.format(hyperparameters=textwrap.indent(describe_hyperparameters(), " " * 10), glue=", ".join(GLUE_TASKS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="model directory or Hub id (MaskAE or a stock encoder)")
    parser.add_argument("--task", required=True, choices=TASKS, help="what to measure (see below)")
    parser.add_argument("--data", type=Path,
                        help="the tsv, or for probe / finetune a task directory, or for glue the folder of tasks "
                        "(every task but mteb)")
    parser.add_argument("--tasks", metavar="NAMES", help="mteb: MTEB task names, comma-separated (e.g. STSBenchmark,SICK-R)")
    parser.add_argument("--eval-data", type=Path, help="probe, finetune: the evaluation tsv when --data is the training tsv (or instead of its validation.tsv)")
    parser.add_argument("--of", choices=("sts", "probe"), default="sts", help="layers: which figure to sweep (default: sts)")
    parser.add_argument("--layer", type=int, help="hidden state k to embed with (0 = embeddings; default: the code); "
                        "finetune, glue: fine-tune the first k layers")
    parser.add_argument("--pooling", choices=SENTENCE_POOLINGS,
                        help="how token vectors become one sentence vector (default: mean; mteb on an exported graph: its own)")
    parser.add_argument("--baseline", action="store_true", help="also score LSA and PCA baselines of width --dim "
                        "(finetune, glue: the random-init network and LSA)")
    parser.add_argument("--dim", type=positive_int, help="width of the baselines (default: the model's code width)")
    parser.add_argument("--budgets", default="100,1000,all",
                        help="probe, finetune, glue: label budgets, comma-separated (default: 100,1000,all)")
    parser.add_argument("--seeds", type=positive_int,
                        help="probe, finetune, glue: samples drawn per budget, averaged (default: 5 for probe, 3 otherwise)")
    parser.add_argument("--max-train", type=positive_int,
                        help="probe, finetune, glue: size of the training pool that 'all' means (default: every row)")
    parser.add_argument("--whole-stack", action="store_true",
                        help="finetune, glue: fine-tune a MaskAE model's whole stack, not only its encoder")
    parser.add_argument("--save", type=Path, metavar="DIR", help="finetune, glue: keep the fine-tuned classifier here")
    parser.add_argument("--limit", type=positive_int, help="only the first N evaluation rows (quick checks)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default: 32)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="sts, probe, layers, mteb: bf16 embeds with bf16 matmuls where the CPU has a bf16 unit "
                        "(AMX, AVX-512 BF16, ARM BF16) or on a GPU, fp32 elsewhere (default: fp32)")
    parser.add_argument("--max-length", type=int, help="truncate sentences to this many tokens (default: the model's limit)")
    parser.add_argument("--block-size", type=positive_int, default=128, help="mlm: tokens per block (default: 128)")
    parser.add_argument("--pseudo-blocks", type=int, default=4, help="mlm: blocks scored for pseudo-perplexity (default: 4)")
    parser.add_argument("--output", type=Path, help="layers: where to save the PNG plot (default: layers-<of>.png); "
                        "mteb: a folder for MTEB's result files (default: none written)")
    parser.add_argument("--whiten", metavar="CORPUS",
                        help="sts, probe: also report embeddings whitened by a fit on this unlabelled corpus "
                        "(a task tsv's sentence columns, or any text corpus)")
    parser.add_argument("--whiten-dim", type=positive_int, help="with --whiten: keep the top D directions")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.mlm import evaluate_mlm
    from ..evaluation.probes import evaluate_layers, evaluate_probe
    from ..evaluation.sts import evaluate_sts
    from ..evaluation.tasks import parse_budgets
    from ..utils.plotting import plot_layer_curve

    if args.task == "mteb":
        return report(run_mteb(args), args)
    if args.tasks is not None:
        raise ConfigError("--tasks names MTEB tasks, which only --task mteb runs; drop it, or pass --task mteb.")
    if args.data is None:
        raise ConfigError(f"--task {args.task} needs --data; pass the file or folder it scores (see maskae evaluate --help).")
    args.pooling = args.pooling or "mean"  # only an exported graph, under mteb, has a pooling of its own
    if args.dtype is not None and args.task in ("finetune", "glue", "mlm"):
        raise ConfigError(f"--dtype applies to the embedding tasks (sts, probe, layers, mteb), not {args.task}; "
                          "remove it, or pass one of those tasks.")
    if args.task in ("finetune", "glue"):
        return report(fine_tune(args), args)
    if args.task == "mlm":
        result = evaluate_mlm(args.model, args.data, block_size=args.block_size, limit=args.limit,
                              pseudo_blocks=args.pseudo_blocks, batch_size=args.batch_size)
        return report(result, args)
    common = dict(
        pooling=args.pooling, baseline=args.baseline, dim=args.dim, limit=args.limit,
        batch_size=args.batch_size, max_length=args.max_length,
    )
    task = args.of if args.task == "layers" else args.task
    model, whiten = fitted_whitening(args)
    if task == "sts":
        data = dict(data=args.data)
    else:
        train, eval_ = task_files(args.data, args.eval_data)
        data = dict(train=train, eval=eval_, budgets=parse_budgets(args.budgets), seeds=tuple(range(seed_count(args))),
                    max_train=args.max_train)
    if args.task == "layers":
        result = evaluate_layers(model, task, **data, **common)
        output = args.output or Path(f"layers-{task}.png")
        layers = [row["layer"] for row in result["layers"]]
        if task == "sts":
            series = {"STS": [row["spearman_x100"] for row in result["layers"]]}
            ylabel = "STS Spearman x100"
        else:
            names = [b["budget"] for b in result["layers"][0]["budgets"]]
            series = {f"{n} labels": [row["budgets"][i]["accuracy_x100"] for row in result["layers"]] for i, n in enumerate(names)}
            ylabel = "probe accuracy x100"
        result["plot"] = str(plot_layer_curve(layers, series, ylabel, output, title=str(args.model)))
    elif task == "sts":
        result = evaluate_sts(model, layer=args.layer, whiten=whiten, **data, **common)
    else:
        result = evaluate_probe(model, layer=args.layer, whiten=whiten, **data, **common)
    result["dtype"] = model.dtype
    return report(result, args)


def seed_count(args: argparse.Namespace) -> int:
    return args.seeds or DEFAULT_SEEDS.get(args.task, DEFAULT_SEEDS["probe"])


def fine_tune(args: argparse.Namespace) -> dict:
    """--task finetune | glue."""
    from ..evaluation.finetuning import evaluate_finetune, evaluate_glue
    from ..evaluation.tasks import parse_budgets

    if args.whiten is not None:
        raise ConfigError(f"--whiten applies to --task sts or probe, not {args.task}; drop it or change the task.")
    run = evaluate_glue if args.task == "glue" else evaluate_finetune
    return run(args.model, args.data, **({} if args.task == "glue" else {"eval_data": args.eval_data}), budgets=parse_budgets(args.budgets), seeds=tuple(range(seed_count(args))),
               max_train=args.max_train, layer=args.layer, whole_stack=args.whole_stack, baseline=args.baseline,
               limit=args.limit, save=args.save)


def run_mteb(args: argparse.Namespace) -> dict:
    """--task mteb."""
    from ..evaluation.mteb import MtebResult, evaluate_mteb

    if not args.tasks or not args.tasks.strip(" ,"):
        raise ConfigError("--task mteb needs --tasks NAMES; pass MTEB task names, comma-separated, e.g. "
                          "--tasks STSBenchmark,SICK-R.")
    if args.data is not None:
        raise ConfigError("--data does not apply to --task mteb, which loads each task's own data; drop it.")
    if args.whiten is not None:
        raise ConfigError("--whiten does not apply to --task mteb, which uses the whitening stored with the model "
                          "(maskae whiten); drop it.")
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    scores = evaluate_mteb(args.model, names, layer=args.layer, pooling=args.pooling, batch_size=args.batch_size,
                           dtype=args.dtype, output_folder=args.output)
    return MtebResult({"task": "mteb", "layer": args.layer, "pooling": args.pooling, "main_scores": scores,
                       "output": None if args.output is None else str(args.output)})


def fitted_whitening(args: argparse.Namespace):
    """(embedder, whiten) for the sts / probe runners, loaded at --dtype: with --whiten, a whitening fitted
    on that corpus at --layer and --pooling; else True (a stored one)."""
    from ..evaluation.frozen import load_embedder

    if args.whiten is None:
        if args.whiten_dim is not None:
            raise ConfigError("--whiten-dim needs --whiten CORPUS to fit the whitening on.")
        return load_embedder(args.model, args.dtype), True
    if args.task not in ("sts", "probe"):
        raise ConfigError(f"--whiten applies to --task sts or probe, not {args.task}; drop it or change the task.")
    from ..data.corpus import corpus_texts
    from ..embeddings.embedder import fit_whitening
    from ..embeddings.whitening import DEFAULT_MAX_TEXTS

    texts = corpus_texts(args.whiten, DEFAULT_MAX_TEXTS)
    embedder = load_embedder(args.model, args.dtype)
    whitening = fit_whitening(embedder, texts, dim=args.whiten_dim, layer=args.layer, pooling=args.pooling,
                              batch_size=args.batch_size, max_length=args.max_length)
    return embedder, whitening


def report(result: dict, args: argparse.Namespace) -> int:
    """Print the result's own table (and, with --json, the figures as one JSON object)."""
    result["model"] = str(args.model)
    print(result)
    if args.json:
        print(json.dumps(result))
    return 0
