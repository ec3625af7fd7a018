"""Property-based tests (hypothesis) of the invariants the design rests on, on a fixed example budget so that
CI stays fast: the collator never touches special tokens or padding and labels only original ids, for any
seed, length and noise; packing neither loses nor duplicates a token; any recipe mapping is either a recipe
or one MaskAEError; `embed` takes hostile text (NUL, control and bidi characters, very long lines,
whitespace only) or refuses it in one DataError."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_stock, tiny_tokenizer
from datasets import Dataset, disable_progress_bars, enable_progress_bars
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import maskae
from maskae import DataCollatorForDenoising, NoiseConfig
from maskae.data.corpus import tokenize_and_pack
from maskae.errors import DataError, MaskAEError
from maskae.training.recipe import Recipe, recipe_from_dict

BUDGET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def no_dataset_bars():
    """datasets would draw a bar per packed example; the rest of the suite keeps its bars."""
    disable_progress_bars()
    yield
    enable_progress_bars()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_stock("bert").save_pretrained(path)
    tiny_tokenizer(path)
    return maskae.Embedder.from_pretrained(path, device="cpu")


rows = st.lists(st.lists(st.integers(5, 98), min_size=0, max_size=30), min_size=1, max_size=6)
@st.composite
def noises(draw) -> NoiseConfig:
    """Any noise NoiseConfig accepts (it refuses some combinations itself, in one line)."""
    try:
        return NoiseConfig(mask_prob=draw(st.floats(0.01, 0.9)), whole_word=draw(st.booleans()),
                           span_lambda=draw(st.one_of(st.none(), st.floats(1.0, 4.0))),
                           substitute_prob=draw(st.floats(0.0, 0.3)))
    except MaskAEError:
        assume(False)


@BUDGET
@given(rows=rows, noise=noises(), seed=st.integers(0, 2**31 - 1))
def test_the_collator_keeps_specials_and_padding_and_labels_only_originals(tokenizer, rows, noise, seed):
    features = [{"input_ids": [tokenizer.cls_token_id, *row, tokenizer.sep_token_id]} for row in rows]
    collator = DataCollatorForDenoising(tokenizer, noise=noise, seed=seed)
    batch = collator(features)
    again = DataCollatorForDenoising(tokenizer, noise=noise, seed=seed)(features)
    width = max(len(f["input_ids"]) for f in features)
    original = torch.full((len(features), width), tokenizer.pad_token_id)
    for i, f in enumerate(features):
        original[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == original.shape
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert torch.equal(batch["input_ids"][special], original[special])
    targets = batch["labels"] != -100
    assert not (targets & special).any()
    assert torch.equal(batch["labels"][targets], original[targets])
    assert all(torch.equal(batch[key], again[key]) for key in batch)  # keyed noise: same seed, same batch


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.lists(st.integers(5, 98), min_size=1, max_size=40), min_size=1, max_size=12),
       block_size=st.integers(4, 24))
def test_packing_neither_loses_nor_duplicates_a_token(tokenizer, texts, block_size):
    words = [" ".join(tokenizer.convert_ids_to_tokens(ids)) for ids in texts]
    stream = [i for ids in texts for i in (*ids, tokenizer.sep_token_id)]
    if len(stream) < block_size - 1:
        with pytest.raises(DataError, match="fewer tokens than one block"):
            tokenize_and_pack(Dataset.from_dict({"text": words}), tokenizer, block_size)
        return
    blocks = tokenize_and_pack(Dataset.from_dict({"text": words}), tokenizer, block_size)["input_ids"]
    assert all(len(b) == block_size and b[0] == tokenizer.cls_token_id for b in blocks)
    body = [i for b in blocks for i in b[1:]]
    assert body == stream[: len(body)]  # in order, nothing repeated or skipped
    assert len(stream) - len(body) < block_size - 1  # only the last partial block is dropped


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
              st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children,
                                                                                max_size=3)),
    max_leaves=8,
)
sections = st.sampled_from(["model", "data", "noise", "training", "tokenizer", "evaluation", "growth", "distill",
                            "bogus"])


@BUDGET
@given(recipe=st.dictionaries(sections, st.one_of(values, st.dictionaries(st.text(max_size=20), values,
                                                                              max_size=4)), max_size=4))
def test_any_recipe_mapping_is_a_recipe_or_one_error(recipe):
    try:
        result = recipe_from_dict(recipe)
    except MaskAEError as error:
        assert "\n" not in str(error).strip() and str(error).strip()
    else:
        assert isinstance(result, Recipe)


hostile = st.text(st.characters(blacklist_categories=()), max_size=60) | st.sampled_from([
    "\x00\x00", "\u202e\u2066bidi\u2069", "\t\r\x0b\x0c", "   ", "w1 " * 20000, "\ufeffw2", "a\ud800b", "\udfff",
])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(hostile, min_size=1, max_size=4))
def test_embed_takes_hostile_text_or_refuses_it_in_one_line(tiny_model, texts):
    try:
        vectors = tiny_model.embed(texts)
    except DataError as error:
        assert "surrogate" in str(error) and "\n" not in str(error)
        assert any(0xD800 <= ord(c) <= 0xDFFF for text in texts for c in text)
    else:
        assert vectors.shape == (len(texts), 32) and torch.isfinite(torch.from_numpy(vectors)).all()
