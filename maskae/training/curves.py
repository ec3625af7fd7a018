"""Training curves of one or more runs, read from the logs that `maskae train` writes: loss, held-out masked
accuracy, learning rate and throughput against the step and against wall-clock time, so runs of different
speeds can be compared on both budgets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..utils.plotting import _save, plt
from .logs import read_log

# (log file, key, axis label): one row of panels each.
CURVES = (
    ("log.jsonl", "loss", "training loss"),
    ("eval_log.jsonl", "eval_masked_accuracy", "masked accuracy (held out)"),
    ("log.jsonl", "lr", "learning rate"),
    ("log.jsonl", "tokens_per_s", "tokens/s"),
)
X_AXES = (("step", "step"), ("elapsed_s", "wall-clock time (s)"))


def run_series(run_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """{key: {"step": [...], "elapsed_s": [...], "value": [...]}} for each curve that `run_dir` logged;
    elapsed_s is empty for runs logged before it was recorded."""
    run_dir = Path(run_dir)
    if not (run_dir / "log.jsonl").is_file():
        raise DataError(f"{run_dir} has no log.jsonl; pass a directory that `maskae train` wrote.")
    logs = {name: read_log(run_dir / name) if (run_dir / name).is_file() else [] for name in {c[0] for c in CURVES}}
    series = {}
    for name, key, _ in CURVES:
        rows = [r for r in logs[name] if r.get(key) is not None]
        if rows:
            timed = all("elapsed_s" in r for r in rows)
            series[key] = {"step": [r["step"] for r in rows], "value": [r[key] for r in rows],
                           "elapsed_s": [r["elapsed_s"] for r in rows] if timed else []}
    return series


def plot_training_curves(runs: Sequence[str | Path], output: str | Path) -> tuple[Path, plt.Figure]:
    """One panel per curve (rows) and x axis (step, wall-clock time; columns), one line per run.

    Returns the saved PNG and the figure (closed, but its axes keep the plotted data)."""
    if not runs:
        raise DataError("no run to plot; pass one or more directories that `maskae train` wrote.")
    names = _labels(runs)
    all_series = {name: run_series(run) for name, run in zip(names, runs)}
    figure, axes = plt.subplots(len(CURVES), len(X_AXES), figsize=(11, 3 * len(CURVES)), squeeze=False)
    for row, (_, key, label) in enumerate(CURVES):
        for column, (x_key, x_label) in enumerate(X_AXES):
            panel = axes[row][column]
            for name, series in all_series.items():
                if key in series and series[key][x_key]:
                    panel.plot(series[key][x_key], series[key]["value"], marker="." if key.startswith("eval_") else None,
                               label=name)
            if not panel.lines:
                panel.text(0.5, 0.5, "not in the logs", transform=panel.transAxes, ha="center", color="gray")
            panel.set_xlabel(x_label)
            panel.set_ylabel(label)
            panel.grid(alpha=0.3)
            if key == "lr":
                panel.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    axes[0][0].legend()
    return _save(figure, output), figure


def _labels(runs: Sequence[str | Path]) -> list[str]:
    """Run directory names, with parents added until they differ (runs/a/final vs runs/b/final)."""
    paths = [Path(run).resolve() for run in runs]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]
