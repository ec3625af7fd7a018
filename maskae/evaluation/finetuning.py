"""Fine-tuning evaluation, GLUE-style: how many labels does a task need on top of this encoder?

The classifier is the stock `AutoModelForSequenceClassification` of the encoder: a MaskAE model's
encoder exported with `export_stock(part="encoder")` (the first `split_layer` layers; `whole_stack`
exports the whole stack), or a stock encoder as it is; `layers` keeps only its first k layers. That
is what a user fine-tunes with transformers' `run_glue.py` or `Trainer`, so the figure is the one they
would get. Each label budget is a stratified, seeded sample of the training split; a slice of the
budget (never the validation split) picks the best epoch; the validation split is scored with the
task's GLUE metric. The baselines run through the same code: the same architecture from a seeded
random initialisation (only the weights differ), and a linear model on LSA features of the encoder's
width. Hyper-parameters are few and fixed per budget size (`HYPERPARAMETERS`), not tuned per model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from ..auto_registration import register_auto_classes
from ..configuration_maskae import num_layers, with_num_layers
from ..errors import CheckpointError, ConfigError, DataError, TokenizerError
from ..export.stock import export_stock
from ..loading import load_checked
from ..metrics import shared_metric
from ..modeling_maskae import MaskAEForMaskedLM
from ..training.optimization import build_optimizer
from .baselines import lsa_embeddings
from .results import FinetuneResult, GlueResult
from .schedule import (
    EVAL_BATCH_SIZE,
    HYPERPARAMETERS,
    MAX_GRAD_NORM,
    MAX_LENGTH,
    MIN_BUDGET,
    SELECTION_FRACTION,
    WARMUP_FRACTION,
    WEIGHT_DECAY,
    HyperParameters,
    hyperparameters,
    learning_rate,
)
from .tasks import (
    GLUE_TASKS,
    METRICS,
    TaskData,
    TaskSpec,
    budget_name,
    read_task,
    task_files,
    task_spec,
)

register_auto_classes()  # maskae checkpoints load through the Auto classes and save with their auto_map

logger = logging.getLogger(__name__)


def sample_budget(labels: np.ndarray, budget: int | None, seed: int, regression: bool) -> np.ndarray:
    """Indices (sorted) of a seeded sample of `budget` examples, stratified by class unless
    `regression`; None means every example."""
    n = len(labels)
    if budget is None or budget == n:
        return np.arange(n)
    if budget > n:
        raise DataError(f"label budget {budget} is larger than the {n} training examples; lower it or use 'all'.")
    if regression:
        return np.sort(np.random.default_rng(seed).choice(n, size=budget, replace=False))
    chosen, _ = train_test_split(np.arange(n), train_size=budget, stratify=labels, random_state=seed)
    return np.sort(chosen)


def selection_split(indices: np.ndarray, labels: np.ndarray, seed: int, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, selection) parts of a budget: `SELECTION_FRACTION` of it, stratified, picks the best epoch."""
    size = max(2, round(SELECTION_FRACTION * len(indices)))
    if not regression:
        size = max(size, len(np.unique(labels[indices])))
    stratify = None if regression else labels[indices]
    train, held = train_test_split(indices, test_size=size, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(held)


# ---------------------------------------------------------------- the classifier


@dataclass
class Encoder:
    """A stock checkpoint to fine-tune, its tokenizer, and how many of its layers to keep."""

    checkpoint: str
    tokenizer: PreTrainedTokenizerBase
    layers: int
    hidden_size: int


def prepare_encoder(model: str | Path, workdir: str | Path, layer: int | None = None, whole_stack: bool = False) -> Encoder:
    """The stock checkpoint a user would fine-tune: a stock encoder as it is; a MaskAE model's encoder
    exported with `export_stock` into `workdir` (or its whole stack, `whole_stack`). `layer` keeps the
    first k layers (default: all of the checkpoint, i.e. `split_layer` for a MaskAE encoder)."""
    try:
        config = AutoConfig.from_pretrained(str(model))
        tokenizer = AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load a model and tokenizer from {str(model)!r} ({error}); pass a model directory or Hub id.") from None
    checkpoint = str(model)
    if config.model_type == "maskae":
        if whole_stack and config.objective != "mlm":
            raise ConfigError(f"{str(model)!r} was trained with objective={config.objective!r}, whose decoder has no "
                              "stock equivalent to fine-tune; drop --whole-stack to fine-tune its encoder.")
        loader = MaskAEForMaskedLM if whole_stack else AutoModel
        export_stock(load_checked(loader, model, what="a maskae model"), workdir, part="full" if whole_stack else "encoder")
        checkpoint = str(workdir)
        config = AutoConfig.from_pretrained(checkpoint)
    depth = num_layers(config)
    if layer is not None and not 1 <= layer <= depth:
        raise ConfigError(f"--layer {layer} is out of range: the checkpoint to fine-tune has {depth} layers; choose 1 to {depth}.")
    if tokenizer.pad_token_id is None:
        raise TokenizerError(f"the tokenizer of {str(model)!r} has no padding token; set one before fine-tuning.")
    hidden = int(getattr(config, "hidden_size", None) or config.dim)
    return Encoder(checkpoint, tokenizer, layer or depth, hidden)


def build_classifier(
    encoder: Encoder, num_labels: int, seed: int, random_init: bool = False, id2label: dict[int, str] | None = None
) -> PreTrainedModel:
    """The stock `*ForSequenceClassification` of `encoder` (its first `encoder.layers` layers), its
    head (and, with `random_init`, every weight) initialised from `seed`: the random-init baseline is
    the same architecture and code path, only the weights differ."""
    config = AutoConfig.from_pretrained(encoder.checkpoint)
    config = with_num_layers(config, encoder.layers)
    config.num_labels = num_labels
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    if id2label:
        config.id2label, config.label2id = dict(id2label), {v: k for k, v in id2label.items()}
    torch.manual_seed(seed)
    if random_init:
        return AutoModelForSequenceClassification.from_config(config)
    with _expected_load_report():
        return load_checked(AutoModelForSequenceClassification, encoder.checkpoint, new_head=True,
                            what="an encoder to fine-tune", config=config)


@contextlib.contextmanager
def _expected_load_report():
    """Silence transformers' load report and progress bar: a new head (and, with fewer layers, unused
    upper layers) is what fine-tuning asks for, once per seed and budget."""
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[tuple[str, ...]], max_length: int = MAX_LENGTH) -> list[dict]:
    """Token ids of each example; a pair is tokenized as one pair (tokenizer(a, b)), as BERT takes it."""
    columns = [list(c) for c in zip(*texts)]
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]


def _batch(
    tokenizer: PreTrainedTokenizerBase, rows: list[dict], labels: np.ndarray | None, regression: bool, device: torch.device
) -> dict:
    batch = dict(tokenizer.pad(rows, return_tensors="pt"))
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def predict(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict], regression: bool) -> np.ndarray:
    """Predicted class ids (or scores) for encoded rows, in input order."""
    model.eval()
    order = np.argsort([-len(r["input_ids"]) for r in rows], kind="stable")
    out = np.empty(len(rows), dtype=np.float64 if regression else np.int64)
    for start in range(0, len(rows), EVAL_BATCH_SIZE):
        chosen = order[start : start + EVAL_BATCH_SIZE]
        logits = model(**_batch(tokenizer, [rows[i] for i in chosen], None, regression, model.device)).logits
        out[chosen] = (logits[:, 0] if regression else logits.argmax(-1)).float().cpu().numpy()
    return out


def task_metrics(spec: TaskSpec, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Each of the task's GLUE metrics (×1), computed by the shipped `evaluate` modules."""
    scores = {}
    for name in spec.metrics:
        module, key = METRICS[name]
        scores[name] = float(shared_metric(module).compute(predictions=predictions, references=references)[key])
    return scores


def headline(scores: dict[str, float]) -> float:
    """A task's single figure, as GLUE averages it: the mean of its metrics."""
    return float(np.mean(list(scores.values())))


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: TaskSpec,
    train: tuple[list[dict], np.ndarray],
    selection: tuple[list[dict], np.ndarray],
    hp: HyperParameters,
    seed: int,
) -> tuple[PreTrainedModel, int]:
    """Train `model` on `train` with `hp` (and the learning rate of its width), keeping the epoch that
    scores best on `selection`; returns the model (with those weights) and that epoch.

    Regression targets are standardised on the budget and the head is mapped back to the label scale at
    the end: a head that starts near 0 would otherwise spend these few small steps on the labels' mean
    (2.7 on STS-B) instead of on their order, which is what Pearson and Spearman score."""
    rows, labels = train
    shift, scale = (float(labels.mean()), float(labels.std()) or 1.0) if spec.regression else (0.0, 1.0)
    labels = (labels - shift) / scale
    generator = torch.Generator().manual_seed(seed)
    optimizer = build_optimizer(model, model.device, lr=learning_rate(model.config.hidden_size), weight_decay=WEIGHT_DECAY)
    steps = hp.epochs * math.ceil(len(rows) / hp.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(WARMUP_FRACTION * steps), steps)
    best, best_epoch, best_state = -math.inf, 0, None
    for epoch in range(1, hp.epochs + 1):
        model.train()
        order = torch.randperm(len(rows), generator=generator).numpy()
        for start in range(0, len(rows), hp.batch_size):
            chosen = order[start : start + hp.batch_size]
            loss = model(**_batch(tokenizer, [rows[i] for i in chosen], labels[chosen], spec.regression, model.device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        score = headline(task_metrics(spec, predict(model, tokenizer, selection[0], spec.regression), selection[1]))
        # A NaN score (constant predictions) never wins. Ties go to the later epoch: a small budget's slice
        # (15 examples at 100 labels) scores the majority-class plateau of the first epochs the same as a
        # model that has started to learn, and the later one has seen more data.
        if score >= best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    if spec.regression:
        to_label_scale(model, shift, scale)
    return model.eval(), best_epoch


@torch.no_grad()
def to_label_scale(model: PreTrainedModel, shift: float, scale: float) -> None:
    """Fold `output * scale + shift` into the regression head's last linear layer, so that the model (and
    a classifier saved with --save) predicts on the labels' own scale."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]
    head.weight.mul_(scale)
    head.bias.mul_(scale).add_(shift)


# ---------------------------------------------------------------- baselines without a network


def pair_features(vectors: list[np.ndarray]) -> np.ndarray:
    """One sentence: its vector; a pair (a, b): [a, b, |a - b|, a * b], the usual pair features."""
    if len(vectors) == 1:
        return vectors[0]
    a, b = vectors
    return np.hstack([a, b, np.abs(a - b), a * b])


def lsa_scores(
    spec: TaskSpec, pool: TaskData, chosen: np.ndarray, valid: TaskData, lsa: tuple[list[np.ndarray], list[np.ndarray]]
) -> dict[str, float]:
    """Logistic regression (ridge regression for a score) on standardised LSA pair features, fitted on
    the whole budget (it has no epochs to select); `lsa` holds each text column's LSA vectors."""
    train_x = pair_features([column[chosen] for column in lsa[0]])
    valid_x = pair_features(lsa[1])
    head = Ridge(alpha=1.0) if spec.regression else LogisticRegression(max_iter=5000)
    model = make_pipeline(StandardScaler(), head).fit(train_x, pool.labels[chosen])
    return task_metrics(spec, model.predict(valid_x), valid.labels)


# ---------------------------------------------------------------- the evaluation


def _summary(budget: int | None, labels: int, runs: list[dict]) -> dict:
    metrics = runs[0]["metrics"].keys()
    summary = {
        "budget": budget_name(budget),
        "labels": labels,
        "seeds": len(runs),
        "metrics_x100": {m: 100 * float(np.mean([r["metrics"][m] for r in runs])) for m in metrics},
        "std_x100": {m: 100 * float(np.std([r["metrics"][m] for r in runs])) for m in metrics},
        "score_x100": 100 * float(np.mean([headline(r["metrics"]) for r in runs])),
        "score_std_x100": 100 * float(np.std([headline(r["metrics"]) for r in runs])),
        "wall_s": float(sum(r["wall_s"] for r in runs)),
    }
    if "best_epoch" in runs[0]:
        summary["best_epochs"] = [r["best_epoch"] for r in runs]
    return summary


def pool_indices(labels: np.ndarray, max_train: int | None, regression: bool) -> np.ndarray:
    """The training pool that "all" means: every example, or a stratified sample (seed 0) of `max_train`."""
    if max_train is None or max_train >= len(labels):
        return np.arange(len(labels))
    return sample_budget(labels, max_train, 0, regression)


def evaluate_finetune(
    model: str | Path,
    data: str | Path,
    *,
    eval_data: str | Path | None = None,
    budgets: Sequence[int | None] = (100, 1000, None),
    seeds: Sequence[int] = (0, 1, 2),
    max_train: int | None = None,
    layer: int | None = None,
    whole_stack: bool = False,
    baseline: bool = False,
    limit: int | None = None,
    save: str | Path | None = None,
    encoder: Encoder | None = None,
) -> dict:
    """Fine-tune `model` on a task at each label budget and seed; validation scores ×100 as mean ± std
    over seeds. `data` is a directory (train.tsv, validation.tsv) or a training file with `eval_data`.

    `max_train` caps the pool that 'all' means; `layer` keeps the first k layers; `whole_stack`
    fine-tunes a MaskAE model's whole stack instead of its encoder; `baseline` adds the random-init
    network and LSA + a linear model of the encoder's width; `save` keeps the fine-tuned classifier of
    the last budget's first seed (save_pretrained, with its tokenizer); `encoder` reuses a prepared one.
    """
    if not seeds:
        raise ConfigError("fine-tuning needs at least one seed; pass e.g. --seeds 3.")
    train_file, eval_file = task_files(data, eval_data)
    spec = task_spec(train_file)
    train_all, valid, classes = read_task(train_file, eval_file, spec, limit)
    pool = pool_indices(train_all.labels, max_train, spec.regression)
    train = TaskData([train_all.texts[i] for i in pool], train_all.labels[pool])
    for budget in budgets:
        if budget is not None and budget > len(train.labels):
            what = f"the training pool (--max-train {max_train})" if len(pool) < len(train_all.labels) else "the training set"
            raise DataError(f"label budget {budget} is larger than {what} of {str(data)!r} ({len(train.labels)} examples); lower it or use 'all'.")
        if (budget or len(train.labels)) < MIN_BUDGET:
            raise ConfigError(f"label budget {budget_name(budget)} ({budget or len(train.labels)} examples) is too small to "
                              f"hold out a selection slice; use at least {MIN_BUDGET}.")
    with tempfile.TemporaryDirectory() as workdir:
        encoder = encoder or prepare_encoder(model, workdir, layer, whole_stack)
        tokenizer = encoder.tokenizer
        rows = encode(tokenizer, train.texts)
        valid_rows = encode(tokenizer, valid.texts)
        num_labels = 1 if spec.regression else len(classes)
        id2label = None if classes is None else dict(enumerate(classes))
        systems = ["model", "random_init"] if baseline else ["model"]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        results: dict[str, list[dict]] = {s: [] for s in systems}
        if baseline:
            results["lsa"] = []
            fit_texts = [t for example in train.texts for t in example]
            columns = [list(c) for c in zip(*train.texts)] + [list(c) for c in zip(*valid.texts)]
            vectors = lsa_embeddings(fit_texts, columns, encoder.hidden_size)
            lsa = vectors[: len(spec.text_columns)], vectors[len(spec.text_columns) :]
        for b, budget in enumerate(budgets):
            runs: dict[str, list[dict]] = {s: [] for s in results}
            for s, seed in enumerate(seeds):
                chosen = sample_budget(train.labels, budget, seed, spec.regression)
                fit_part, held = selection_split(chosen, train.labels, seed, spec.regression)
                hp = hyperparameters(len(chosen))
                for system in systems:
                    started = time.perf_counter()
                    classifier = build_classifier(encoder, num_labels, seed, system == "random_init", id2label).to(device)
                    classifier, epoch = fine_tune(
                        classifier, tokenizer, spec,
                        ([rows[i] for i in fit_part], train.labels[fit_part]),
                        ([rows[i] for i in held], train.labels[held]),
                        hp, seed,
                    )
                    scores = task_metrics(spec, predict(classifier, tokenizer, valid_rows, spec.regression), valid.labels)
                    runs[system].append({"metrics": scores, "best_epoch": epoch, "wall_s": time.perf_counter() - started})
                    logger.info("%s %s, %s labels, seed %d: %s (best epoch %d, %.1f s)", spec.name, system,
                                budget_name(budget), seed, scores, epoch, runs[system][-1]["wall_s"])
                    if save is not None and system == "model" and s == 0 and b == len(budgets) - 1:
                        classifier.save_pretrained(save)
                        tokenizer.save_pretrained(save)
                if baseline:
                    started = time.perf_counter()
                    scores = lsa_scores(spec, train, chosen, valid, lsa)
                    runs["lsa"].append({"metrics": scores, "wall_s": time.perf_counter() - started})
            for system, system_runs in runs.items():
                results[system].append(_summary(budget, len(train.labels) if budget is None else budget, system_runs))
    result = FinetuneResult({
        "task": "finetune",
        "glue_task": spec.name,
        "data": str(data),
        "metrics": list(spec.metrics),
        "train_pool": len(train.labels),
        "eval_examples": len(valid.labels),
        "layers": encoder.layers,
        "whole_stack": whole_stack,
        "hyperparameters": [asdict(h) for h in HYPERPARAMETERS],
        "lr": learning_rate(encoder.hidden_size),
        "budgets": results["model"],
        "wall_s": float(sum(r["wall_s"] for system in results.values() for r in system)),
    })
    if baseline:
        result["baselines"] = {"random_init": {"budgets": results["random_init"]},
                               "lsa": {"dim": encoder.hidden_size, "budgets": results["lsa"]}}
    if save is not None:
        result["saved"] = str(save)
    return result


def evaluate_glue(model: str | Path, data: str | Path, *, save: str | Path | None = None, **kwargs) -> dict:
    """`evaluate_finetune` on each GLUE task found under `data` (cola/, sst2/, mrpc/, stsb/, rte/),
    and the GLUE-style average of the tasks' scores for each system and budget; `save` keeps one
    classifier per task in `save/<task>`."""
    data = Path(data)
    missing = [name for name in GLUE_TASKS if not (data / name).is_dir()]
    if missing:
        raise DataError(f"{str(data)!r} lacks the task folder(s) {', '.join(missing)}; pass the folder that holds "
                        f"{', '.join(GLUE_TASKS)}.")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        encoder = prepare_encoder(model, workdir, kwargs.pop("layer", None), kwargs.get("whole_stack", False))
        tasks = {
            name: evaluate_finetune(model, data / name, encoder=encoder,
                                    save=None if save is None else Path(save) / name, **kwargs)
            for name in GLUE_TASKS
        }
    average: dict[str, list[dict]] = {}
    for system in ["model", *next(iter(tasks.values())).get("baselines", {})]:
        per_task = [t["budgets"] if system == "model" else t["baselines"][system]["budgets"] for t in tasks.values()]
        average[system] = [
            {"budget": rows[0]["budget"], "score_x100": float(np.mean([r["score_x100"] for r in rows]))}
            for rows in zip(*per_task)
        ]
    return GlueResult({"task": "glue", "tasks": tasks, "average": average, "layers": encoder.layers,
                       "wall_s": time.perf_counter() - started})
