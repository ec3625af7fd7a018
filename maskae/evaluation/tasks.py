"""The labelled data every evaluation reads: tab-separated files with a header (STS pairs, labelled
sentences, GLUE tasks), label budgets, and the GLUE task table. Read with a CSV-aware reader, one
clear error per malformed file."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

STS_COLUMNS = ("sentence1", "sentence2", "score")
PROBE_COLUMNS = ("sentence", "label")
DEFAULT_BUDGETS: tuple[int | None, ...] = (100, 1000, None)  # None = every label in the training pool
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


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


@dataclass
class TaskData:
    """One split of a task: a tuple of texts per example and its label (class id or score)."""

    texts: list[tuple[str, ...]]
    labels: np.ndarray


def read_tsv(path: str | Path, columns: Sequence[str], limit: int | None = None) -> dict[str, list[str]]:
    """The named columns of a tab-separated file with a header, read with a CSV-aware reader
    (STS-B quotes fields that contain a double quote)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{str(path)!r} is not a file; pass a tab-separated file with a header row.")
    # utf-8-sig: a byte-order mark (as Windows tools write) is not part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{str(path)!r} lacks the column(s) {', '.join(missing)} (found: {', '.join(reader.fieldnames or [])}); "
                    f"give it a header row with {', '.join(columns)}, tab-separated."
                )
            table: dict[str, list[str]] = {c: [] for c in columns}
            for row in reader:
                if limit is not None and len(table[columns[0]]) >= limit:
                    break
                if any(row[c] is None for c in columns):
                    raise DataError(f"{str(path)!r}, line {reader.line_num}: the row has fewer fields than the header; "
                                    "give every row a value for each column, tab-separated.")
                for c in columns:
                    table[c].append(row[c])
        except UnicodeDecodeError:
            raise DataError(f"{str(path)!r} is not UTF-8 text; re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
    if not table[columns[0]]:
        raise DataError(f"{str(path)!r} has a header but no rows; give it at least one data row.")
    return table


def read_sts(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(sentence1, sentence2, gold scores) of an STS tsv."""
    table = read_tsv(path, STS_COLUMNS, limit)
    try:
        scores = np.array([float(s) for s in table["score"]])
    except ValueError as error:
        raise DataError(f"{str(path)!r} has a non-numeric score ({error}); the score column must hold numbers.") from None
    return table["sentence1"], table["sentence2"], scores


def read_labelled(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(sentences, labels) of a labelled tsv; labels are kept as strings (any label set works)."""
    table = read_tsv(path, PROBE_COLUMNS, limit)
    return table["sentence"], table["label"]


def task_files(data: str | Path, eval_data: str | Path | None = None) -> tuple[Path, Path]:
    """(train, evaluation) tsv files, taken the same way by every labelled task: a directory holding
    train.tsv and validation.tsv, or a training file with `eval_data` beside it (which also overrides a
    directory's validation.tsv)."""
    data = Path(data)
    if data.is_dir():
        train = data / "train.tsv"
        if not train.is_file():
            raise DataError(f"{str(data)!r} has no train.tsv; pass a task directory with train.tsv and validation.tsv, "
                            "or a training file with --eval-data.")
        return train, Path(eval_data) if eval_data is not None else data / "validation.tsv"
    if eval_data is None:
        raise DataError(f"--data {str(data)!r} is a file, so it needs --eval-data for the evaluation rows; or pass a "
                        "directory with train.tsv and validation.tsv.")
    return data, Path(eval_data)


def task_spec(train: str | Path) -> TaskSpec:
    """The GLUE task of a training file (by its folder's name: cola, sst2, mrpc, stsb, rte, also written
    SST-2 or STS-B), or a generic one read off its columns: sentence + label (classification), sentence1 +
    sentence2 + label (pair classification) or sentence1 + sentence2 + score (pair regression)."""
    train = Path(train)
    key = re.sub(r"[^a-z0-9]", "", train.parent.name.lower())
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
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


def read_task(
    train_file: str | Path, eval_file: str | Path, spec: TaskSpec, limit: int | None = None
) -> tuple[TaskData, TaskData, list[str] | None]:
    """(train, validation, class names or None for regression) of a task's two files; `limit` caps the
    validation rows."""
    train_file = Path(train_file)
    columns = (*spec.text_columns, spec.label_column)
    train = read_tsv(train_file, columns)
    valid = read_tsv(eval_file, columns, limit)
    if spec.regression:
        classes = None
        try:
            labels = [np.array([float(v) for v in t[spec.label_column]]) for t in (train, valid)]
        except ValueError as error:
            raise DataError(f"{str(train_file)!r} has a non-numeric {spec.label_column} ({error}); scores must be numbers.") from None
    else:
        classes = sorted(set(train[spec.label_column]))
        if len(classes) < 2:
            raise DataError(f"{str(train_file)!r} has a single label; a classifier needs at least two.")
        lookup = {c: i for i, c in enumerate(classes)}
        unseen = sorted(set(valid[spec.label_column]) - set(lookup))
        if unseen:
            raise DataError(f"validation labels {', '.join(unseen[:5])} never occur in {str(train_file)!r}; use matching label sets.")
        labels = [np.array([lookup[v] for v in t[spec.label_column]]) for t in (train, valid)]
    splits = [TaskData(list(zip(*(t[c] for c in spec.text_columns))), y) for t, y in zip((train, valid), labels)]
    return splits[0], splits[1], classes


def budget_name(budget: int | None) -> str:
    return "all" if budget is None else str(budget)


def parse_budgets(text: str) -> tuple[int | None, ...]:
    """'100,1000,all' -> (100, 1000, None)."""
    budgets: list[int | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "all":
            budgets.append(None)
        elif item.isdigit() and int(item) > 0:
            budgets.append(int(item))
        else:
            raise ConfigError(f"label budget {item!r} is not a positive integer or 'all'; write e.g. 100,1000,all.")
    return tuple(budgets)
