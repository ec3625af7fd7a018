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
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from .configuration_maskae import num_layers, with_num_layers
from .errors import CheckpointError, ConfigError, DataError, TokenizerError
from .evaluation import budget_name, load_metric, lsa_embeddings, read_tsv
from .export import export_stock
from .modeling_maskae import MaskAEForMaskedLM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's texts and labels are, and how GLUE scores it."""

    name: str
    text_columns: tuple[str, ...]  # one sentence, or a pair fed as one pair
    label_column: str
    regression: bool
    metrics: tuple[str, ...]  # keys of METRICS


GLUE_TASKS = {
    "cola": TaskSpec("cola", ("sentence",), "label", False, ("matthews_correlation",)),
    "sst2": TaskSpec("sst2", ("sentence",), "label", False, ("accuracy",)),
    "mrpc": TaskSpec("mrpc", ("sentence1", "sentence2"), "label", False, ("accuracy", "f1")),
    "stsb": TaskSpec("stsb", ("sentence1", "sentence2"), "score", True, ("pearson", "spearman")),
    "rte": TaskSpec("rte", ("sentence1", "sentence2"), "label", False, ("accuracy",)),
}
# metric -> (shipped evaluate module in maskae/metrics, key of its result)
METRICS = {
    "accuracy": ("probe_accuracy", "accuracy"),
    "f1": ("f1", "f1"),
    "matthews_correlation": ("matthews_correlation", "matthews_correlation"),
    "pearson": ("pearson", "pearsonr"),
    "spearman": ("spearman", "spearmanr"),
}


@dataclass(frozen=True)
class HyperParameters:
    """One row of the fixed schedule: used for budgets of up to `max_labels` labels."""

    max_labels: int | None  # None: any larger budget
    epochs: int  # the epoch that scores best on the selection slice is kept
    batch_size: int


# Small budgets get more epochs so that they still take a hundred or more optimizer steps.
HYPERPARAMETERS = (
    HyperParameters(max_labels=500, epochs=20, batch_size=16),
    HyperParameters(max_labels=5_000, epochs=8, batch_size=32),
    HyperParameters(max_labels=None, epochs=3, batch_size=32),
)
# Peak learning rate: inversely proportional to the width, 3e-4 at 128 (a 128-wide random init learns
# nothing in 8 epochs at 1e-4), 1e-4 at 384 (MiniLM), 5e-5 at 768 (BERT-base's usual value).
BASE_LR, BASE_WIDTH = 3e-4, 128
WARMUP_FRACTION = 0.1  # linear warm-up over this share of the steps, then linear decay to zero
WEIGHT_DECAY = 0.01  # AdamW
MAX_GRAD_NORM = 1.0
MAX_LENGTH = 128  # tokens per example (a pair counts both sentences), as run_glue.py's default
SELECTION_FRACTION = 0.15  # share of each budget held out to pick the best epoch
MIN_BUDGET = 20
EVAL_BATCH_SIZE = 64


def hyperparameters(labels: int) -> HyperParameters:
    """The schedule row for a budget of `labels` labels."""
    return next(h for h in HYPERPARAMETERS if h.max_labels is None or labels <= h.max_labels)


def learning_rate(hidden_size: int) -> float:
    """The peak learning rate for an encoder of this width (see BASE_LR)."""
    return BASE_LR * BASE_WIDTH / hidden_size


def describe_hyperparameters() -> str:
    """The schedule as text, for `--help` and the README."""
    lines = []
    for h in HYPERPARAMETERS:
        size = f"<= {h.max_labels} labels" if h.max_labels else "more labels"
        lines.append(f"{size:<16} {h.epochs:>2} epochs, batch {h.batch_size}")
    lines += [
        f"every budget:    AdamW, peak lr {BASE_LR:g} x {BASE_WIDTH} / hidden size (1e-4 for a 384-wide encoder),",
        f"                 weight decay {WEIGHT_DECAY}, {WARMUP_FRACTION:.0%} linear warm-up, then linear decay;",
        f"                 gradient norm clipped at {MAX_GRAD_NORM}; {MAX_LENGTH} tokens; the epoch that scores best on",
        f"                 a {SELECTION_FRACTION:.0%} slice of the budget (never the validation split) is kept",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- data


@dataclass
class TaskData:
    """One split of a task: a tuple of texts per example and its label (class id or score)."""

    texts: list[tuple[str, ...]]
    labels: np.ndarray


def task_spec(data_dir: str | Path) -> TaskSpec:
    """The GLUE task a directory holds (by its name: cola, sst2, mrpc, stsb, rte, also written SST-2 or
    STS-B), or a generic one read off train.tsv's columns: sentence + label (classification), sentence1 +
    sentence2 + label (pair classification) or sentence1 + sentence2 + score (pair regression)."""
    data_dir = Path(data_dir)
    key = re.sub(r"[^a-z0-9]", "", data_dir.name.lower())
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    train = data_dir / "train.tsv"
    if not train.is_file():
        raise DataError(f"{str(data_dir)!r} has no train.tsv; pass a task directory with train.tsv and validation.tsv.")
    with train.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    if {"sentence1", "sentence2", "score"} <= set(header):
        return TaskSpec(key, ("sentence1", "sentence2"), "score", True, ("pearson", "spearman"))
    if {"sentence1", "sentence2", "label"} <= set(header):
        return TaskSpec(key, ("sentence1", "sentence2"), "label", False, ("accuracy",))
    if {"sentence", "label"} <= set(header):
        return TaskSpec(key, ("sentence",), "label", False, ("accuracy",))
    raise DataError(
        f"{str(train)!r} has the columns {', '.join(header)}, none of the known layouts; give it a header with "
        "sentence + label, sentence1 + sentence2 + label, or sentence1 + sentence2 + score."
    )


def read_task(data_dir: str | Path, spec: TaskSpec, limit: int | None = None) -> tuple[TaskData, TaskData, list[str] | None]:
    """(train, validation, class names or None for regression) of a task directory; `limit` caps the
    validation rows."""
    data_dir = Path(data_dir)
    columns = (*spec.text_columns, spec.label_column)
    train = read_tsv(data_dir / "train.tsv", columns)
    valid = read_tsv(data_dir / "validation.tsv", columns, limit)
    if spec.regression:
        classes = None
        try:
            labels = [np.array([float(v) for v in t[spec.label_column]]) for t in (train, valid)]
        except ValueError as error:
            raise DataError(f"{str(data_dir)!r} has a non-numeric {spec.label_column} ({error}); scores must be numbers.") from None
    else:
        classes = sorted(set(train[spec.label_column]))
        if len(classes) < 2:
            raise DataError(f"{str(data_dir / 'train.tsv')!r} has a single label; a classifier needs at least two.")
        lookup = {c: i for i, c in enumerate(classes)}
        unseen = sorted(set(valid[spec.label_column]) - set(lookup))
        if unseen:
            raise DataError(f"validation labels {', '.join(unseen[:5])} never occur in {str(data_dir / 'train.tsv')!r}; use matching label sets.")
        labels = [np.array([lookup[v] for v in t[spec.label_column]]) for t in (train, valid)]
    splits = [TaskData(list(zip(*(t[c] for c in spec.text_columns))), y) for t, y in zip((train, valid), labels)]
    return splits[0], splits[1], classes


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
        export_stock(loader.from_pretrained(str(model)), workdir, part="full" if whole_stack else "encoder")
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
        return AutoModelForSequenceClassification.from_pretrained(encoder.checkpoint, config=config)


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
        scores[name] = float(load_metric(module).compute(predictions=predictions, references=references)[key])
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
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate(model.config.hidden_size), fused=True,
    )
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
    """Fine-tune `model` on the task in directory `data` (train.tsv, validation.tsv) at each label
    budget and seed; validation scores ×100 as mean ± std over seeds.

    `max_train` caps the pool that 'all' means; `layer` keeps the first k layers; `whole_stack`
    fine-tunes a MaskAE model's whole stack instead of its encoder; `baseline` adds the random-init
    network and LSA + a linear model of the encoder's width; `save` keeps the fine-tuned classifier of
    the last budget's first seed (save_pretrained, with its tokenizer); `encoder` reuses a prepared one.
    """
    if not seeds:
        raise ConfigError("fine-tuning needs at least one seed; pass e.g. --seeds 3.")
    spec = task_spec(data)
    train_all, valid, classes = read_task(data, spec, limit)
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
    result = {
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
    }
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
    return {"task": "glue", "tasks": tasks, "average": average, "layers": encoder.layers,
            "wall_s": time.perf_counter() - started}
