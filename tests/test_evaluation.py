"""Evaluation: figures on fixed arrays agree with scipy / scikit-learn / numpy computed independently;
the CLI end to end on a tiny projection-bottleneck model; MiniLM's STS figure agrees with
sentence-transformers' own evaluator."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

from maskae import ConfigError, DataError, MaskAEForMaskedLM
from maskae.cli import main
from maskae.embeddings.embedder import embed
from maskae.evaluation.probes import probe_accuracy
from maskae.evaluation.sts import (
    evaluate_sts,
    lsa_embeddings,
    pca_embeddings,
    sts_spearman,
)
from maskae.evaluation.tasks import parse_budgets, read_sts
from maskae.utils.plotting import plot_embedding_map, project_2d

CODE_DIM = 8


def blobs(n: int, seed: int, noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes in 6 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 6)) * noise + y[:, None] * np.array([1.0, 0.5, 0, 0, 0, 0])
    return x, y


# ---------------------------------------------------------------- figures on arrays


def test_read_sts_matches_pandas(shared_data):
    path = shared_data / "stsb" / "test.tsv"
    first, second, scores = read_sts(path)
    reference = pd.read_csv(path, sep="\t", keep_default_na=False)
    assert len(first) == len(reference) == 1379
    assert first == reference["sentence1"].tolist() and second == reference["sentence2"].tolist()
    np.testing.assert_array_equal(scores, reference["score"].to_numpy())
    assert any('"' in s for s in first + second)  # the quoted rows were unquoted, not split


def test_missing_column_is_a_data_error(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("sentence1\tsentence2\nA cat.\tA dog.\n")
    with pytest.raises(DataError, match="score"):
        read_sts(path)


def test_sts_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    gold = rng.uniform(0, 5, 50)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert sts_spearman(a, b, gold) == pytest.approx(spearmanr(cosine, gold).statistic, abs=1e-12)


def test_probe_on_all_labels_matches_sklearn():
    train_x, train_y = blobs(200, 0)
    eval_x, eval_y = blobs(100, 1)
    (row,) = probe_accuracy(train_x, train_y, eval_x, eval_y, budgets=[None], seeds=[0, 1, 2])
    scaler = StandardScaler().fit(train_x)
    reference = LogisticRegression(max_iter=5000).fit(scaler.transform(train_x), train_y)
    expected = accuracy_score(eval_y, reference.predict(scaler.transform(eval_x)))
    assert row == {"budget": "all", "labels": 200, "seeds": 1, "accuracy_x100": pytest.approx(100 * expected), "std_x100": 0.0}


def test_probe_budget_is_mean_over_stratified_seeds():
    train_x, train_y = blobs(200, 0)
    eval_x, eval_y = blobs(100, 1)
    (row,) = probe_accuracy(train_x, train_y, eval_x, eval_y, budgets=[20], seeds=[0, 1, 2])
    scores = []
    for seed in (0, 1, 2):
        x, _, y, _ = train_test_split(train_x, train_y, train_size=20, stratify=train_y, random_state=seed)
        assert Counter(y)[1] == round(20 * train_y.mean())  # stratified
        scaler = StandardScaler().fit(x)
        probe = LogisticRegression(max_iter=5000).fit(scaler.transform(x), y)
        scores.append(accuracy_score(eval_y, probe.predict(scaler.transform(eval_x))))
    assert row["seeds"] == 3 and row["labels"] == 20
    assert row["accuracy_x100"] == pytest.approx(100 * np.mean(scores))
    assert row["std_x100"] == pytest.approx(100 * np.std(scores))
    assert row["std_x100"] > 0  # the seeds really drew different samples


def test_probe_labels_budgets_and_errors():
    train_x, train_y = blobs(300, 0, noise=1.0)
    eval_x, eval_y = blobs(200, 1, noise=1.0)
    names = np.array(["neg", "pos"])
    rows = probe_accuracy(train_x, names[train_y], eval_x, names[eval_y], budgets=[4, 300, None], seeds=[0, 1])
    assert [r["budget"] for r in rows] == ["4", "all"]  # 300 labels is the whole pool: dropped
    assert rows[1]["accuracy_x100"] > rows[0]["accuracy_x100"]  # more labels, better probe
    with pytest.raises(ConfigError, match="smaller than the number of classes"):
        probe_accuracy(train_x, train_y, eval_x, eval_y, budgets=[1])
    with pytest.raises(DataError, match="never occur"):
        probe_accuracy(train_x, train_y, eval_x, eval_y + 5, budgets=[None])


def test_parse_budgets():
    assert parse_budgets("100, 1000,all") == (100, 1000, None)
    with pytest.raises(ConfigError):
        parse_budgets("100,lots")


def test_lsa_shapes_and_width_limit():
    texts = ["the cat sat on the mat", "a dog ate my homework", "the dog sat", "cats and dogs", "homework on a mat"]
    fitted, other = lsa_embeddings(texts, [texts, ["a cat and a dog"]], dim=3)
    assert fitted.shape == (5, 3) and other.shape == (1, 3)
    with pytest.raises(ConfigError, match="vocabulary"):
        lsa_embeddings(texts, [texts], dim=50)


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 10)) @ rng.normal(size=(10, 10))
    (reduced,) = pca_embeddings(x, [x], dim=4)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:4].T
    np.testing.assert_allclose(np.abs(reduced), np.abs(expected), atol=1e-8)  # equal up to each axis' sign
    with pytest.raises(ConfigError, match="PCA"):
        pca_embeddings(x, [x], dim=11)


def test_embedding_map(tmp_path):
    x, y = blobs(30, 0)
    assert project_2d(x, "pca").shape == (30, 2)  # t-SNE runs in test_plot_command
    output = plot_embedding_map(x, y, tmp_path / "map.png", method="pca")
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="umap"):
        project_2d(x, "umap")


# ---------------------------------------------------------------- end to end on a tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, shared_data) -> Path:
    """A 2-layer MaskAE encoder of a tiny random BERT with a projection bottleneck of width 8, and a
    word-level vocabulary that covers the STS-B and SST-2 rows the tests use (few [UNK]s, so few
    pairs have tied cosines)."""
    root = tmp_path_factory.mktemp("tiny_eval")
    words = Counter()
    for name, columns in (("stsb/test.tsv", ("sentence1", "sentence2")), ("sst2/validation.tsv", ("sentence",))):
        with open(shared_data / name, encoding="utf-8") as handle:
            for row in list(csv.DictReader(handle, delimiter="\t"))[:60]:
                words.update(w for c in columns for w in re.findall(r"\w+|[^\w\s]", row[c].lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    torch.manual_seed(0)
    stock = root / "stock"
    BertForMaskedLM(BertConfig(**{**TINY, "vocab_size": len(vocab)})).save_pretrained(stock)
    model = MaskAEForMaskedLM.from_backbone(str(stock), split_layer=2, bottleneck="projection", bottleneck_dim=CODE_DIM)
    path = root / "maskae"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if "--json" in argv and code == 0 else None), err


def test_cli_sts_with_baselines_on_projection_model(tiny_model, shared_data, capsys):
    data = shared_data / "stsb" / "test.tsv"
    code, result, _ = run_cli(capsys, "evaluate", tiny_model, "--task", "sts", "--data", data, "--limit", 40, "--baseline", "--json")
    assert code == 0
    assert result["pairs"] == 40 and result["dim"] == CODE_DIM
    pca, lsa = result["baselines"]["pca"], result["baselines"]["lsa"]
    assert (pca["dim"], pca["from_dim"], lsa["dim"]) == (CODE_DIM, 32, CODE_DIM)  # PCA of the 32-wide top layer
    first, second, gold = read_sts(data, limit=40)
    codes = embed(tiny_model, first + second).astype(np.float64)
    assert codes.shape == (80, CODE_DIM)
    cosine = [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(codes[:40], codes[40:])]
    expected = spearmanr(cosine, gold).statistic
    assert result["spearman_x100"] == pytest.approx(100 * expected, abs=1e-6)


def test_cli_layers_table_and_plot(tiny_model, shared_data, tmp_path, capsys):
    png = tmp_path / "layers.png"
    argv = ["evaluate", tiny_model, "--task", "layers", "--of", "sts", "--data", shared_data / "stsb" / "test.tsv",
            "--limit", 30, "--output", png, "--json"]
    code, result, _ = run_cli(capsys, *argv)
    assert code == 0
    rows = result["layers"]
    assert [r["layer"] for r in rows] == [0, 1, 2]  # embeddings and the 2 encoder layers
    assert all(r["dim"] == 32 for r in rows)  # layers are full width, before the bottleneck
    assert result["best_layer"] == max(rows, key=lambda r: r["spearman_x100"])["layer"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    direct = evaluate_sts(tiny_model, shared_data / "stsb" / "test.tsv", layer=1, limit=30)
    assert rows[1]["spearman_x100"] == pytest.approx(direct["spearman_x100"], abs=1e-9)


def test_cli_probe(tiny_model, shared_data, capsys):
    sst2 = shared_data / "sst2"
    argv = ["evaluate", tiny_model, "--task", "probe", "--data", sst2, "--budgets", "10,all", "--seeds", 2,
            "--max-train", 60, "--limit", 40, "--baseline", "--json"]
    code, result, _ = run_cli(capsys, *argv)
    assert code == 0
    assert result["train_pool"] == 60 and result["eval_examples"] == 40 and result["dim"] == CODE_DIM
    assert [(b["budget"], b["labels"], b["seeds"]) for b in result["budgets"]] == [("10", 10, 2), ("all", 60, 1)]
    assert set(result["baselines"]) == {"lsa", "pca"}
    assert all(0 <= b["accuracy_x100"] <= 100 for b in result["budgets"])


def test_cli_errors_are_one_line(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfine\t1\n")
    code, _, err = run_cli(capsys, "evaluate", tiny_model, "--task", "probe", "--data", bad, "--eval-data", bad)
    assert code == 2 and err.strip().splitlines() == [
        f"maskae evaluate: error: {str(bad)!r} lacks the column(s) sentence (found: text, label); "
        "give it a header row with sentence, label, tab-separated."
    ]
    good = tmp_path / "good.tsv"
    good.write_text("sentence1\tsentence2\tscore\nA cat.\tA dog.\t1.0\nA car.\tA bus.\t2.0\n")
    code, _, err = run_cli(capsys, "evaluate", tiny_model, "--task", "sts", "--data", good, "--layer", 9)
    assert code == 2 and err.count("error:") == 1 and "layer=9 is out of range" in err.strip().splitlines()[-1]


def test_plot_command(tiny_model, shared_data, tmp_path, capsys):
    png = tmp_path / "map.png"
    with threadpool_limits(1):  # t-SNE's OpenMP threads crawl on a shared, oversubscribed CPU
        code, _, _ = run_cli(capsys, "plot", tiny_model, "--data", shared_data / "sst2" / "validation.tsv",
                             "--limit", 50, "--method", "tsne", "--output", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- the real reference


def test_cli_sts_in_bf16_follows_fp32(tiny_model, shared_data, capsys, monkeypatch):
    """--dtype bf16 embeds under bf16 autocast (forced on here: autocast runs on any CPU, if slowly) and
    says so; on a tiny model the figure stays close to fp32's without being the same computation."""
    from maskae.utils import host

    monkeypatch.setattr(host, "has_bf16_unit", lambda: True)
    data = shared_data / "stsb" / "test.tsv"
    figures = {}
    for dtype in ("fp32", "bf16"):
        code, result, _ = run_cli(capsys, "evaluate", tiny_model, "--task", "sts", "--data", data, "--limit", 200,
                                  "--dtype", dtype, "--json")
        assert code == 0 and result["dtype"] == dtype
        figures[dtype] = result["spearman_x100"]
    assert figures["bf16"] != figures["fp32"] and figures["bf16"] == pytest.approx(figures["fp32"], abs=2)


def test_minilm_sts_matches_sentence_transformers(minilm_path, shared_data):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    data = shared_data / "stsb" / "test.tsv"
    first, second, gold = read_sts(data, limit=200)
    ours = evaluate_sts(minilm_path, data, limit=200)["spearman_x100"] / 100
    evaluator = EmbeddingSimilarityEvaluator(first, second, gold.tolist(), main_similarity="cosine")
    theirs = evaluator(SentenceTransformer(str(minilm_path), device="cpu"))
    assert ours == pytest.approx(theirs[evaluator.primary_metric], abs=0.002)


def test_cli_mlm_matches_direct_computation(tiny_model, shared_data, tmp_path, capsys):
    from maskae.data.collator import DataCollatorForDenoising
    from maskae.data.corpus import load_corpus, tokenize_and_pack

    corpus = tmp_path / "corpus.txt"
    with open(shared_data / "sst2" / "validation.tsv", encoding="utf-8") as handle:
        corpus.write_text("\n".join(row["sentence"] for row in list(csv.DictReader(handle, delimiter="\t"))[:30]))
    argv = ["evaluate", tiny_model, "--task", "mlm", "--data", corpus, "--block-size", 16, "--limit", 6,
            "--pseudo-blocks", 2, "--batch-size", 4, "--json"]
    code, result, _ = run_cli(capsys, *argv)
    assert code == 0 and result["blocks"] == 6 and result["pseudo_blocks"] == 2

    tokenizer = BertTokenizer.from_pretrained(tiny_model)
    model = MaskAEForMaskedLM.from_pretrained(tiny_model).eval()
    rows = list(tokenize_and_pack(load_corpus(corpus), tokenizer, 16).select(range(6)))
    collator = DataCollatorForDenoising(tokenizer, seed=0)
    hits = total = 0
    with torch.no_grad():
        for start in (0, 4):
            batch = collator(rows[start : start + 4])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            chosen = batch["labels"] != -100
            hits += int((logits.argmax(-1)[chosen] == batch["labels"][chosen]).sum())
            total += int(chosen.sum())
        assert result["masked_accuracy"] == pytest.approx(hits / total)

        losses = []
        for row in rows[:2]:
            for position, token in enumerate(row["input_ids"]):
                if token in tokenizer.all_special_ids:
                    continue
                ids = torch.tensor([row["input_ids"]])
                ids[0, position] = tokenizer.mask_token_id
                log_probs = model(input_ids=ids).logits[0, position].log_softmax(-1)
                losses.append(-float(log_probs[token]))
    assert result["pseudo_perplexity"] == pytest.approx(float(np.exp(np.mean(losses))), rel=1e-4)
