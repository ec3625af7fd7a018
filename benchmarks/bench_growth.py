"""Progressive stacking against fixed depth: validation masked accuracy over training wall-clock time.

Trains recipes/tiny-wikitext2.yaml and its progressive twin recipes/progressive-wikitext2.yaml one
after the other, on the same data with the same tokenizer (learned once), under the same wall-clock
cap. Every --eval-every steps the clock stops and the model is scored on the same noised held-out
blocks; the curves go to a PNG and a JSON file, and the script prints how long each run took to
reach the fixed-depth run's final accuracy.

    python benchmarks/bench_growth.py --out runs/bench-growth
    python benchmarks/bench_growth.py --set training.max_steps=200 --set training.warmup_steps=20

Timings are only comparable on an otherwise idle machine; the load average at the start and end of
each run is printed so that a shared machine shows in the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from maskae.data.tokenization import train_tokenizer
from maskae.metrics.masked_lm import masked_lm_metrics
from maskae.training.growth import GrowthTrainer
from maskae.training.recipe import load_recipe
from maskae.training.trainer import Trainer, train_source

REPO = Path(__file__).resolve().parents[1]
RUNS = {"fixed depth": REPO / "recipes" / "tiny-wikitext2.yaml",
        "progressive stacking": REPO / "recipes" / "progressive-wikitext2.yaml"}


class Timed:
    """A trainer mix-in: training wall-clock time without the evaluations, and an accuracy curve."""

    eval_every: int
    budget_s: float | None

    def prepare(self) -> None:
        super().prepare()
        self.curve: list[dict] = []
        self.train_time = 0.0
        self.tick = time.perf_counter()

    def on_step_end(self) -> None:
        super().on_step_end()  # growth (if any) counts as training time
        self.train_time += time.perf_counter() - self.tick
        step = self.state.step
        over_budget = self.budget_s is not None and self.train_time >= self.budget_s
        if step % self.eval_every == 0 or step == self.args.max_steps or over_budget:
            accuracy = masked_lm_metrics(self.model, self.eval_batches)["masked_accuracy"]
            self.curve.append({"step": step, "train_time_s": self.train_time, "masked_accuracy": accuracy})
            print(f"  step {step:4d}  {self.train_time:7.1f} s  masked accuracy {accuracy:.4f}", flush=True)
        if over_budget:
            self.args.max_steps = step  # the loop ends here
        self.tick = time.perf_counter()


class TimedTrainer(Timed, Trainer):
    pass


class TimedGrowthTrainer(Timed, GrowthTrainer):
    pass


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation whose accuracy is at least `target`."""
    return next((point["train_time_s"] for point in curve if point["masked_accuracy"] >= target), None)


def plot(curves: dict[str, list[dict]], target: float, path: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        axes.plot([p["train_time_s"] for p in curve], [p["masked_accuracy"] for p in curve], marker="o",
                  markersize=3, label=name)
    axes.axhline(target, color="grey", linestyle="--", linewidth=1, label="fixed-depth final accuracy")
    axes.set_xlabel("training wall-clock time (s, evaluations excluded)")
    axes.set_ylabel("validation masked-token accuracy")
    axes.set_title("maskae: progressive stacking vs fixed depth")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.text(0.01, 0.01, note, fontsize=7, color="grey")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-growth"), help="output directory (must be new)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override applied to both runs (repeatable)")
    parser.add_argument("--eval-every", type=int, default=20, help="evaluate every this many steps")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock cap on each run's training time (default: the recipes' step budget only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    args.out.mkdir(parents=True, exist_ok=False)
    first = load_recipe(RUNS["fixed depth"], args.overrides)
    tokenizer = args.out / "tokenizer"
    train_tokenizer(train_source(first), vocab_size=first.tokenizer.train.vocab_size, out_dir=tokenizer,
                    kind=first.tokenizer.train.kind, lowercase=first.tokenizer.train.lowercase)
    shared = [f"tokenizer.path={tokenizer}", "tokenizer.train=null", "training.eval_steps=null",
              "training.save_steps=1000000", "training.pseudo_perplexity_blocks=0"]

    curves, loads = {}, {}
    for (name, path), trainer_class in zip(RUNS.items(), (TimedTrainer, TimedGrowthTrainer)):
        recipe = load_recipe(path, [*args.overrides, *shared])
        print(f"{name}: {path.name}, {recipe.training.max_steps} steps", flush=True)
        trainer = trainer_class(recipe, args.out / path.stem)
        trainer.eval_every, trainer.budget_s = args.eval_every, args.budget_s
        before = os.getloadavg()[0]
        trainer.train()
        curves[name], loads[name] = trainer.curve, (before, os.getloadavg()[0])

    target = curves["fixed depth"][-1]["masked_accuracy"]
    summary = {"target_masked_accuracy": target, "overrides": args.overrides, "runs": {}}
    print(f"\ntarget: the fixed-depth run's final masked accuracy, {target:.4f}")
    for name, curve in curves.items():
        reached = time_to_reach(curve, target)
        summary["runs"][name] = {"final_masked_accuracy": curve[-1]["masked_accuracy"], "steps": curve[-1]["step"],
                                 "train_time_s": curve[-1]["train_time_s"], "time_to_target_s": reached,
                                 "load_average_start_end": loads[name], "curve": curve}
        shown = "never" if reached is None else f"{reached:.1f} s"
        print(f"{name:>21}: final accuracy {curve[-1]['masked_accuracy']:.4f} after {curve[-1]['train_time_s']:.1f} s "
              f"({curve[-1]['step']} steps); reaches the target at {shown}; load average {loads[name][0]:.1f} -> "
              f"{loads[name][1]:.1f}")
    fixed, grown = (summary["runs"][n]["time_to_target_s"] for n in curves)
    if fixed == curves["fixed depth"][0]["train_time_s"]:
        print("the fixed-depth run already had its final accuracy at its first evaluation: the runs are too short "
              "to leave the starting plateau, and the time-to-target comparison means nothing; train longer")
    elif grown is not None:
        print(f"progressive stacking needs {100 * (1 - grown / fixed):.1f}% less training time to reach the target")
    (args.out / "growth_curves.json").write_text(json.dumps(summary, indent=2) + "\n")
    note = f"{os.cpu_count()} CPU cores, load average " + ", ".join(
        f"{n}: {a:.1f}->{b:.1f}" for n, (a, b) in loads.items())
    plot(curves, target, args.out / "growth_vs_fixed.png", note)
    print(f"plot: {args.out / 'growth_vs_fixed.png'}")


if __name__ == "__main__":
    main()
