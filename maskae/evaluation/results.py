"""Evaluation results that know how to print themselves, as sentence-transformers' evaluators do.

Each is the plain dict the evaluation returns (so it saves as JSON and compares as a dict), with a
`__str__` that renders its figures as a small table; `maskae evaluate` prints that and nothing else."""

from __future__ import annotations


class EvaluationResult(dict):
    """The figures of one evaluation; `str(result)` is its table."""


def _systems(result: dict) -> list[tuple[str, list[dict]]]:
    """(name, per-budget rows) of the model and each baseline."""
    return [("model", result["budgets"])] + [(n, b["budgets"]) for n, b in result.get("baselines", {}).items()]


class MlmResult(EvaluationResult):
    def __str__(self) -> str:
        lines = [f"masked LM on {self['blocks']} blocks of {self['block_size']} tokens (15% masked, seed 0)",
                 f"  masked accuracy x100 {100 * self['masked_accuracy']:8.2f}",
                 f"  perplexity           {self['perplexity']:8.2f}   (over the masked tokens)"]
        if "pseudo_perplexity" in self:
            lines.append(f"  pseudo-perplexity    {self['pseudo_perplexity']:8.2f}   (first {self['pseudo_blocks']} blocks)")
        return "\n".join(lines)


class StsResult(EvaluationResult):
    def cells(self) -> list[tuple[str, float]]:
        """(name, figure) of the model and each baseline: one row of a layer sweep."""
        return [("model", self["spearman_x100"])] + [(n, b["spearman_x100"]) for n, b in self.get("baselines", {}).items()]

    def __str__(self) -> str:
        lines = [f"STS on {self['pairs']} pairs: Spearman x100 of cosine similarity vs gold score",
                 f"  {'model':<8} dim {self['dim']:>5}   {self['spearman_x100']:6.2f}"]
        for name, base in self.get("baselines", {}).items():
            lines.append(f"  {name:<8} dim {base['dim']:>5}   {base['spearman_x100']:6.2f}")
        if "whitened" in self:
            white = self["whitened"]
            lines.append(f"  {'whitened':<8} dim {white['dim']:>5}   {white['spearman_x100']:6.2f}"
                         f"   (fitted on {white['fitted_on']} texts)")
        return "\n".join(lines)


class ProbeResult(EvaluationResult):
    def cells(self) -> list[tuple[str, float]]:
        """(name, figure) of each budget of the model and of each baseline: one row of a layer sweep."""
        cells = [(f"{b['budget']} labels", b["accuracy_x100"]) for b in self["budgets"]]
        for name, base in self.get("baselines", {}).items():
            cells += [(f"{name} {b['budget']}", b["accuracy_x100"]) for b in base["budgets"]]
        return cells

    def __str__(self) -> str:
        budgets = self["budgets"]
        lines = [
            f"linear probe: accuracy x100 on {self['eval_examples']} examples (mean ± std over seeds); "
            f"'all' = the {self['train_pool']} examples of the training pool",
            f"  {'':<8} {'dim':>5}  " + "".join(f"{b['budget'] + ' labels':>18}" for b in budgets),
        ]
        rows = [("model", self["dim"], budgets)]
        rows += [(name, base["dim"], base["budgets"]) for name, base in self.get("baselines", {}).items()]
        if "whitened" in self:
            rows.append(("whitened", self["whitened"]["dim"], self["whitened"]["budgets"]))
        for name, dim, figures in rows:
            cells = "".join(f"{b['accuracy_x100']:>11.2f} ± {b['std_x100']:4.2f}" for b in figures)
            lines.append(f"  {name:<8} {dim:>5}  {cells}")
        return "\n".join(lines)


class LayersResult(EvaluationResult):
    """An sts or probe figure at every layer; `layers` holds one `StsResult` or `ProbeResult` each."""

    def __str__(self) -> str:
        first = self["layers"][0]
        what = (
            f"STS Spearman x100 on {first['pairs']} pairs" if self["of"] == "sts"
            else f"probe accuracy x100 on {first['eval_examples']} examples ('all' = {first['train_pool']} labels)"
        )
        names = [name for name, _ in first.cells()]
        lines = [f"{what}, by layer (0 = embeddings)", "  layer" + "".join(f"{n:>14}" for n in names)]
        for row in self["layers"]:
            lines.append(f"  {row['layer']:>5}" + "".join(f"{value:>14.2f}" for _, value in row.cells()))
        plot = f"; plot: {self['plot']}" if "plot" in self else ""
        lines.append(f"best layer: {self['best_layer']} ({self['best']:.2f}){plot}")
        return "\n".join(lines)


class FinetuneResult(EvaluationResult):
    def __str__(self) -> str:
        metrics = self["metrics"]
        lines = [
            f"fine-tuning on {self['glue_task']} ({self['layers']} layers): {' and '.join(metrics)} x100 on "
            f"{self['eval_examples']} validation examples (mean ± std over seeds; 'all' = the {self['train_pool']} "
            "training examples)",
            f"  {'':<12}{'labels':>7}  " + "".join(f"{m:>22}" for m in metrics) + f"{'time':>10}",
        ]
        for name, rows in _systems(self):
            for row in rows:
                cells = "".join(f"{row['metrics_x100'][m]:>14.2f} ± {row['std_x100'][m]:5.2f}" for m in metrics)
                lines.append(f"  {name:<12}{row['budget']:>7}  {cells}{row['wall_s']:>9.0f}s")
        saved = f"; classifier saved to {self['saved']}" if "saved" in self else ""
        lines.append(f"total {self['wall_s']:.0f} s{saved}")
        return "\n".join(lines)


class GlueResult(EvaluationResult):
    HEADERS = {"cola": "CoLA mcc", "sst2": "SST-2 acc", "mrpc": "MRPC acc/F1", "stsb": "STS-B P/S", "rte": "RTE acc"}

    def __str__(self) -> str:
        tasks = self["tasks"]
        lines = [
            f"GLUE validation scores x100 ({self['layers']} layers; mean over seeds; a task with two metrics shows "
            "their mean)",
            f"  {'':<12}{'labels':>7}" + "".join(f"{self.HEADERS.get(t, t):>13}" for t in tasks) + f"{'average':>10}{'time':>9}",
        ]
        first = next(iter(tasks.values()))
        for s, (name, rows) in enumerate(_systems(first)):
            for b, row in enumerate(rows):
                task_rows = [_systems(t)[s][1][b] for t in tasks.values()]
                cells = "".join(f"{r['score_x100']:>13.2f}" for r in task_rows)
                seconds = sum(r["wall_s"] for r in task_rows)
                average = self["average"][name][b]["score_x100"]
                lines.append(f"  {name:<12}{row['budget']:>7}{cells}{average:>10.2f}{seconds:>8.0f}s")
        lines.append(f"total {self['wall_s']:.0f} s")
        return "\n".join(lines)
