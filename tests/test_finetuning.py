"""Fine-tuning evaluation: seeded stratified budgets, GLUE metrics equal to scikit-learn / scipy, a
random-init baseline that really starts untrained, pairs tokenized as pairs, readable errors."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, weights
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
)

from maskae import DataError, MaskAEForMaskedLM
from maskae.cli import main
from maskae.evaluation import finetuning as ft

ROWS = 48  # training rows per task in the tiny copies of the GLUE tasks


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory, shared_data) -> Path:
    """The first rows of each GLUE task (train and validation), in task folders named as in ../shared/data."""
    root = tmp_path_factory.mktemp("glue")
    for task in ft.GLUE_TASKS:
        (root / task).mkdir()
        for split, rows in (("train", ROWS), ("validation", 24)):
            lines = (shared_data / task / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
            (root / task / f"{split}.tsv").write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_maskae(tmp_path_factory, glue_dir) -> Path:
    """A MaskAE model (4-layer tiny BERT split 2 + 2) with a word-level vocabulary of the tiny tasks."""
    words = Counter()
    for path in glue_dir.glob("*/*.tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                for column in ("sentence", "sentence1", "sentence2"):
                    words.update(re.findall(r"\w+|[^\w\s]", row.get(column, "").lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    root = tmp_path_factory.mktemp("tiny_ft")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**{**TINY, "vocab_size": len(vocab)})).save_pretrained(root / "stock")
    model = MaskAEForMaskedLM.from_backbone(str(root / "stock"), split_layer=2)
    model.save_pretrained(root / "maskae")
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root / "maskae")
    return root / "maskae"


@pytest.fixture
def short_schedule(monkeypatch):
    """Two epochs for every budget: these tests check the wiring, not how well a tiny model learns."""
    monkeypatch.setattr(ft, "HYPERPARAMETERS", (ft.HyperParameters(max_labels=None, epochs=2, batch_size=16),))


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if "--json" in argv and code == 0 else None), err


def test_budgets_are_stratified_and_seeded():
    labels = np.array([0] * 300 + [1] * 100)
    a = ft.sample_budget(labels, 40, seed=0, regression=False)
    assert len(a) == 40 and len(set(a)) == 40 and np.bincount(labels[a]).tolist() == [30, 10]
    assert np.array_equal(a, ft.sample_budget(labels, 40, seed=0, regression=False))
    assert not np.array_equal(a, ft.sample_budget(labels, 40, seed=1, regression=False))
    fit, held = ft.selection_split(a, labels, seed=0, regression=False)
    assert sorted([*fit, *held]) == sorted(a) and len(held) == 6 and set(labels[held]) == {0, 1}
    scores = np.linspace(0, 5, 400)
    b = ft.sample_budget(scores, 50, seed=3, regression=True)
    assert len(set(b)) == 50 and np.array_equal(b, ft.sample_budget(scores, 50, seed=3, regression=True))
    assert np.array_equal(ft.sample_budget(labels, None, seed=5, regression=False), np.arange(400))
    with pytest.raises(DataError, match="larger than the 400 training examples"):
        ft.sample_budget(labels, 401, seed=0, regression=False)


def test_metrics_equal_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    gold, guess = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert ft.task_metrics(ft.GLUE_TASKS["cola"], guess, gold)["matthews_correlation"] == pytest.approx(
        matthews_corrcoef(gold, guess), abs=1e-12)
    mrpc = ft.task_metrics(ft.GLUE_TASKS["mrpc"], guess, gold)
    assert mrpc["accuracy"] == pytest.approx(accuracy_score(gold, guess), abs=1e-12)
    assert mrpc["f1"] == pytest.approx(f1_score(gold, guess), abs=1e-12)
    assert ft.headline(mrpc) == pytest.approx((mrpc["accuracy"] + mrpc["f1"]) / 2)
    scores, predicted = rng.uniform(0, 5, 200), rng.uniform(0, 5, 200)
    stsb = ft.task_metrics(ft.GLUE_TASKS["stsb"], predicted, scores)
    assert stsb["pearson"] == pytest.approx(pearsonr(predicted, scores).statistic, abs=1e-12)
    assert stsb["spearman"] == pytest.approx(spearmanr(predicted, scores).statistic, abs=1e-12)


def test_task_specs_from_names_and_columns(glue_dir, tmp_path):
    assert ft.task_spec(glue_dir / "stsb" / "train.tsv").regression
    assert ft.task_spec(tmp_path / "STS-B" / "train.tsv") == ft.GLUE_TASKS["stsb"]
    custom = tmp_path / "para"
    custom.mkdir()
    (custom / "train.tsv").write_text("sentence1\tsentence2\tlabel\na\tb\tyes\n")
    spec = ft.task_spec(custom / "train.tsv")
    assert spec.text_columns == ("sentence1", "sentence2") and not spec.regression
    (custom / "train.tsv").write_text("text\tlabel\na\t1\n")
    with pytest.raises(DataError, match="none of the known layouts"):
        ft.task_spec(custom / "train.tsv")


def test_a_task_is_given_as_a_directory_or_as_two_files(glue_dir, tmp_path):
    """finetune takes --data and --eval-data the way probe does."""
    task = glue_dir / "stsb"
    assert ft.task_files(task) == (task / "train.tsv", task / "validation.tsv")
    assert ft.task_files(task / "train.tsv", task / "validation.tsv") == (task / "train.tsv", task / "validation.tsv")
    with pytest.raises(DataError, match="needs --eval-data"):
        ft.task_files(task / "train.tsv")
    with pytest.raises(DataError, match="has no train.tsv"):
        ft.task_files(tmp_path)


def test_random_init_baseline_starts_untrained(tiny_maskae, tmp_path):
    encoder = ft.prepare_encoder(tiny_maskae, tmp_path / "export")
    assert encoder.layers == 2  # the MaskAE encoder: split_layer layers
    pretrained = ft.build_classifier(encoder, 2, seed=7)
    random = ft.build_classifier(encoder, 2, seed=7, random_init=True)
    exported = weights(tmp_path / "export")  # no pooler: the classifier's pooler is new, as in any MaskAE export
    assert exported and not any(k.startswith("pooler") for k in exported)
    for key, value in exported.items():  # the pretrained classifier holds the exported encoder's weights
        assert torch.equal(pretrained.bert.state_dict()[key], value), key
    encoder_keys = [k for k in random.state_dict() if k.startswith("bert.encoder")]
    assert all(not torch.equal(random.state_dict()[k], pretrained.state_dict()[k]) for k in encoder_keys if k.endswith("weight")
               and "LayerNorm" not in k)
    torch.manual_seed(7)
    fresh = AutoModelForSequenceClassification.from_config(random.config)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in random.state_dict().items())
    again = ft.build_classifier(encoder, 2, seed=7)  # the head is seeded too
    assert torch.equal(again.classifier.weight, pretrained.classifier.weight)
    assert ft.prepare_encoder(tiny_maskae, tmp_path / "whole", whole_stack=True).layers == 4


def test_pairs_are_tokenized_as_pairs(tiny_maskae):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_maskae)
    pairs = [("the cat sat .", "a dog ran ."), ("hello", "world")]
    rows = ft.encode(tokenizer, pairs)
    for (a, b), row in zip(pairs, rows):
        expected = tokenizer(a, b)
        assert row["input_ids"] == expected["input_ids"] and row["token_type_ids"] == expected["token_type_ids"]
        assert row["input_ids"].count(tokenizer.sep_token_id) == 2 and 1 in row["token_type_ids"]
    single = ft.encode(tokenizer, [("the cat sat .",)])
    assert single[0]["input_ids"] == tokenizer("the cat sat .")["input_ids"]


def test_finetune_with_baselines_is_deterministic_and_saves(tiny_maskae, glue_dir, tmp_path, short_schedule):
    kwargs = dict(budgets=(24, None), seeds=(0,), baseline=True, layer=1)
    result = ft.evaluate_finetune(tiny_maskae, glue_dir / "mrpc", save=tmp_path / "clf", **kwargs)
    assert result["layers"] == 1 and result["metrics"] == ["accuracy", "f1"] and result["train_pool"] == ROWS
    assert [b["labels"] for b in result["budgets"]] == [24, ROWS]
    assert set(result["baselines"]) == {"random_init", "lsa"} and result["baselines"]["lsa"]["dim"] == TINY["hidden_size"]
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    assert saved.config.num_hidden_layers == 1 and saved.config.id2label == {0: "0", 1: "1"}
    again = ft.evaluate_finetune(tiny_maskae, glue_dir / "mrpc", **kwargs)
    assert [b["metrics_x100"] for b in again["budgets"]] == [b["metrics_x100"] for b in result["budgets"]]


def test_glue_table_through_the_cli(tiny_maskae, glue_dir, capsys, short_schedule):
    code, result, _ = run_cli(capsys, "evaluate", tiny_maskae, "--task", "glue", "--data", glue_dir,
                              "--budgets", "all", "--seeds", 1, "--limit", 12, "--json")
    assert code == 0 and list(result["tasks"]) == list(ft.GLUE_TASKS)
    scores = [t["budgets"][0]["score_x100"] for t in result["tasks"].values()]
    assert result["average"]["model"][0]["score_x100"] == pytest.approx(np.mean(scores))
    assert result["tasks"]["stsb"]["metrics"] == ["pearson", "spearman"]


def test_bad_inputs_give_one_readable_error(tiny_maskae, glue_dir, tmp_path, capsys):
    bad = tmp_path / "mytask"
    bad.mkdir()
    (bad / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    (bad / "validation.tsv").write_text("text\tlabel\nfine\t1\n")
    code, _, err = run_cli(capsys, "evaluate", tiny_maskae, "--task", "finetune", "--data", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "none of the known layouts" in err
    code, _, err = run_cli(capsys, "evaluate", tiny_maskae, "--task", "finetune", "--data", glue_dir / "rte",
                           "--budgets", "1000")
    assert code == 2 and err.strip().splitlines() == [
        f"maskae evaluate: error: label budget 1000 is larger than the training set of {str(glue_dir / 'rte')!r} "
        f"({ROWS} examples); lower it or use 'all'."
    ]


def test_regression_trains_on_standardised_scores_and_predicts_on_the_label_scale(tiny_maskae, glue_dir, short_schedule):
    encoder = ft.prepare_encoder(tiny_maskae, glue_dir.parent / "enc-stsb", layer=1)
    train, _, _ = ft.read_task(glue_dir / "stsb" / "train.tsv", glue_dir / "stsb" / "validation.tsv", ft.GLUE_TASKS["stsb"])
    rows = ft.encode(encoder.tokenizer, train.texts)
    model = ft.build_classifier(encoder, 1, seed=0)
    standard = ft.predict(model, encoder.tokenizer, rows, regression=True)
    ft.to_label_scale(model, shift=2.5, scale=1.5)
    assert np.allclose(ft.predict(model, encoder.tokenizer, rows, regression=True), standard * 1.5 + 2.5, atol=1e-5)

    tuned, _ = ft.fine_tune(ft.build_classifier(encoder, 1, seed=0), encoder.tokenizer, ft.GLUE_TASKS["stsb"],
                            (rows, train.labels), (rows, train.labels), ft.hyperparameters(len(rows)), seed=0)
    predicted = ft.predict(tuned, encoder.tokenizer, rows, regression=True)
    # a head trained on z-scores, mapped back: its predictions sit around the labels' mean, not around 0
    assert abs(predicted.mean() - train.labels.mean()) < 0.5 * train.labels.std()
