"""Whitening fitted without labels: identity covariance on the fitting texts, stored with the model,
applied by embed, evaluate and the exports, and readable errors for bad corpora."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES, TINY
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
)

from maskae import (
    DataError,
    MaskAEForMaskedLM,
    Whitening,
    embed,
    export_stock,
    fit_whitening,
    save_for_hub,
)
from maskae.cli import main
from maskae.data.corpus import default_corpus
from maskae.embeddings.whitening import whitening_from_vectors
from maskae.evaluation.sts import evaluate_sts
from maskae.training.recipe import load_recipe

RECIPE = RECIPES / "tiny-wikitext2.yaml"
TEXTS = [line.strip() for line in default_corpus("train").read_text(encoding="utf-8").splitlines()
         if len(line.split()) > 5][:160]


@pytest.fixture(scope="module")
def tiny_maskae(tmp_path_factory) -> Path:
    """A MaskAE model (4-layer tiny BERT split 2 + 2) with a word-level vocabulary of TEXTS."""
    words = Counter(w for text in TEXTS for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    root = tmp_path_factory.mktemp("tiny_white")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**{**TINY, "vocab_size": len(vocab)})).save_pretrained(root / "stock")
    MaskAEForMaskedLM.from_backbone(str(root / "stock"), split_layer=2).save_pretrained(root / "maskae")
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root / "maskae")
    return root / "maskae"


@pytest.fixture
def whitened(tiny_maskae, tmp_path) -> tuple[Path, Whitening]:
    """A copy of the tiny model with a whitening of its code fitted on TEXTS and saved with it."""
    path = tmp_path / "whitened"
    MaskAEForMaskedLM.from_pretrained(tiny_maskae).save_pretrained(path)
    BertTokenizer.from_pretrained(tiny_maskae).save_pretrained(path)
    whitening = fit_whitening(path, TEXTS)
    whitening.save(path)
    return path, whitening


def assert_white(x: np.ndarray, atol: float) -> None:
    x = np.asarray(x, np.float64)
    assert np.abs(x.mean(axis=0)).max() < atol
    assert np.abs(np.cov(x.T, bias=True) - np.eye(x.shape[1])).max() < atol


def test_whitening_of_arrays_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0
    mean, matrix = whitening_from_vectors(x)
    assert_white((x - mean) @ matrix, 1e-10)
    mean, top2 = whitening_from_vectors(x, dim=2)
    assert top2.shape == (6, 2) and np.allclose(top2, matrix[:, :2])
    flat = np.hstack([x, x[:, :1] + x[:, 1:2]])  # a direction the data never varies in is dropped
    assert whitening_from_vectors(flat)[1].shape == (7, 6)
    with pytest.raises(DataError, match="too few to whiten"):
        whitening_from_vectors(x[:5])


def test_fitting_texts_come_out_white_and_save_load_keeps_it(whitened):
    path, whitening = whitened
    config = json.loads((path / "config.json").read_text())
    assert config["whitening"] == {"file": "whitening.safetensors", "layer": None, "pooling": "mean", "dim": whitening.dim}
    assert AutoConfig.from_pretrained(path).model_type == "maskae" and AutoModel.from_pretrained(path) is not None
    loaded = Whitening.load(path)
    assert np.array_equal(loaded.mean, whitening.mean) and np.array_equal(loaded.matrix, whitening.matrix)
    assert (loaded.layer, loaded.pooling, loaded.num_texts) == (None, "mean", len(TEXTS))
    vectors = embed(path, TEXTS)  # applied by default: layer and pooling match the fit
    assert vectors.shape == (len(TEXTS), whitening.dim)
    assert_white(vectors, 1e-3)
    raw = embed(path, TEXTS, whiten=False)
    assert np.allclose(whitening.apply(raw), vectors, atol=1e-4)
    assert embed(path, TEXTS[:2], pooling="cls").shape[1] == TINY["hidden_size"]  # another pooling: raw
    assert embed(path, TEXTS[:2], layer=1).shape[1] == TINY["hidden_size"]  # another layer: raw


def test_exports_apply_the_whitening(whitened, tmp_path):
    path, _ = whitened
    model = MaskAEForMaskedLM.from_pretrained(path)
    expected = embed(path, TEXTS[:8])
    for part in ("encoder", "full"):
        out = export_stock(model, tmp_path / part, part=part, tokenizer=BertTokenizer.from_pretrained(path))
        assert Whitening.load(out).layer == 2  # the code is the stock model's hidden_states[split_layer]
        assert np.allclose(embed(out, TEXTS[:8], layer=2), expected, atol=1e-4), part
    assert np.allclose(embed(tmp_path / "encoder", TEXTS[:8]), expected, atol=1e-4)  # its last layer is the code
    hub = save_for_hub(model, tmp_path / "hub", tokenizer=BertTokenizer.from_pretrained(path))
    assert np.allclose(embed(hub, TEXTS[:8]), expected, atol=1e-4)


def test_evaluate_reports_raw_and_whitened(whitened, tiny_maskae, tmp_path):
    path, whitening = whitened
    sts = tmp_path / "sts.tsv"
    plain = [t.replace('"', "'") for t in TEXTS]  # no quote characters, so the tsv needs no quoting
    rows = [f"{a}\t{b}\t{i % 5}.0" for i, (a, b) in enumerate(zip(plain[:40], plain[40:80]))]
    sts.write_text("sentence1\tsentence2\tscore\n" + "\n".join(rows) + "\n")
    result = evaluate_sts(path, sts)
    assert result["dim"] == TINY["hidden_size"] and result["whitened"]["dim"] == whitening.dim
    assert "whitened" not in evaluate_sts(tiny_maskae, sts)
    assert "whitened" not in evaluate_sts(path, sts, whiten=False)
    assert main(["evaluate", str(tiny_maskae), "--task", "sts", "--data", str(sts), "--whiten", str(sts),
                 "--whiten-dim", "8", "--json"]) == 0


def test_whiten_command_and_bad_corpora(tiny_maskae, tmp_path, capsys):
    model = tmp_path / "model"
    MaskAEForMaskedLM.from_pretrained(tiny_maskae).save_pretrained(model)
    BertTokenizer.from_pretrained(tiny_maskae).save_pretrained(model)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    assert main(["whiten", str(model), "--corpus", str(corpus), "--dim", "8", "--layer", "1"]) == 0
    assert Whitening.load(model).dim == 8 and Whitening.load(model).layer == 1
    assert embed(model, TEXTS[:3], layer=1).shape[1] == 8
    assert embed(model, TEXTS[:3], layer=1, whiten=False).shape[1] == TINY["hidden_size"]
    capsys.readouterr()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for argv in (["whiten", str(model), "--corpus", str(empty)],
                 ["evaluate", str(model), "--task", "sts", "--data", str(corpus), "--whiten", str(empty)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is empty" in err[0], err


def test_recipe_key_whiten_at_end():
    assert load_recipe(RECIPE, ["training.whiten_at_end=false"]).training.whiten_at_end is False
    assert load_recipe(RECIPE, ["training.whiten_at_end=true"]).training.whiten_at_end is True
    assert load_recipe(RECIPE, ["training.whiten_at_end=5000"]).training.whiten_at_end == 5000
    with pytest.raises(Exception, match="whiten_at_end"):
        load_recipe(RECIPE, ["training.whiten_at_end=-1"])
