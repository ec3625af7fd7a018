"""Noise measured statistically on real text (WikiText-2 validation, all-MiniLM-L6-v2's WordPiece)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from maskae import ConfigError, DataCollatorForDenoising, NoiseConfig
from maskae.data.collator import continuation_table
from maskae.data.corpus import iter_packed
from maskae.data.noise import (
    IGNORE_INDEX,
    delete_tokens,
    select_spans,
    select_tokens,
    select_whole_words,
    word_ids_from_continuation,
)

BLOCK = 128
NUM_BLOCKS = 256
BATCH = 32


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def lines(shared_data) -> list[str]:
    text = (shared_data / "wikitext2" / "validation.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()][:1500]


@pytest.fixture(scope="module")
def packed(tokenizer, lines) -> list[dict]:
    blocks = []
    for row in iter_packed(lines, tokenizer, BLOCK):
        blocks.append(row)
        if len(blocks) == NUM_BLOCKS:
            return blocks
    raise AssertionError("the validation text gave fewer blocks than the test needs")


def collate_all(collator, features, batch_size=BATCH) -> list[dict]:
    return [collator(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]


def stack(batches, key) -> torch.Tensor:
    return torch.cat([b[key].reshape(-1) for b in batches])


def test_bert_masking_statistics(tokenizer, packed):
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(), seed=0)
    batches = collate_all(collator, packed)
    original = torch.tensor([f["input_ids"] for f in packed]).reshape(-1)
    corrupted, labels = stack(batches, "input_ids"), stack(batches, "labels")
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    selected = labels != IGNORE_INDEX

    assert special.any()
    assert not (selected & special).any(), "a special token became a target"
    assert torch.equal(labels[selected], original[selected]), "targets must hold the original ids"
    assert torch.equal(corrupted[~selected], original[~selected]), "unselected tokens must be untouched"
    fraction = selected.sum().item() / (~special).sum().item()
    assert abs(fraction - 0.15) <= 0.01, fraction

    masked = (corrupted == tokenizer.mask_token_id) & selected
    kept = (corrupted == original) & selected
    replaced = selected & ~masked & ~kept
    total = selected.sum().item()
    assert abs(masked.sum().item() / total - 0.8) <= 0.025
    assert abs(replaced.sum().item() / total - 0.1) <= 0.025
    assert abs(kept.sum().item() / total - 0.1) <= 0.025
    assert not torch.isin(corrupted[replaced], torch.tensor(tokenizer.all_special_ids)).any()


def test_fractions_are_configurable(tokenizer, packed):
    noise = NoiseConfig(mask_prob=0.3, mask_token_frac=0.5, random_token_frac=0.5)
    batches = collate_all(DataCollatorForDenoising(tokenizer, noise, seed=1), packed[:128])
    original = torch.tensor([f["input_ids"] for f in packed[:128]]).reshape(-1)
    corrupted, labels = stack(batches, "input_ids"), stack(batches, "labels")
    selected = labels != IGNORE_INDEX
    eligible = ~torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert abs(selected.sum().item() / eligible.sum().item() - 0.3) <= 0.01
    masked = ((corrupted == tokenizer.mask_token_id) & selected).sum().item() / selected.sum().item()
    assert abs(masked - 0.5) <= 0.025
    assert ((corrupted == original) & selected).float().sum().item() / selected.sum().item() < 0.01


def test_padding_and_specials_never_targets(tokenizer, lines):
    features = [tokenizer(line, truncation=True, max_length=64) for line in lines[:256]]
    features = [{"input_ids": f["input_ids"]} for f in features]
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(mask_prob=0.4), seed=0)
    for batch in collate_all(collator, features):
        padding = batch["attention_mask"] == 0
        assert padding.any()
        assert (batch["labels"][padding] == IGNORE_INDEX).all()
        assert (batch["input_ids"][padding] == tokenizer.pad_token_id).all()
        original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
        special = torch.isin(original, torch.tensor(tokenizer.all_special_ids)) & ~padding
        assert special.sum() == 2 * len(batch["input_ids"])  # [CLS] and [SEP] of every row
        assert (batch["labels"][special] == IGNORE_INDEX).all()
        # every row with at least one real token has at least one target
        assert ((batch["labels"] != IGNORE_INDEX).sum(1) >= 1).all()


def test_vocabulary_word_boundaries_match_fast_tokenizer(tokenizer, lines):
    """The `##` convention gives exactly the fast tokenizer's words on real text."""
    encodings = tokenizer(lines[:200], truncation=True, max_length=128, padding=True, return_tensors="pt")
    ids = encodings["input_ids"]
    eligible = encodings["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    ours = word_ids_from_continuation(ids, continuation_table(tokenizer), eligible)
    theirs = torch.tensor([[-1 if w is None else w for w in encodings.word_ids(i)] for i in range(len(ids))])
    assert torch.equal(ours, theirs.masked_fill(~eligible, -1))


@pytest.mark.parametrize("given_word_ids", [True, False])
def test_whole_word_masking_never_splits_words(tokenizer, lines, given_word_ids):
    encodings = tokenizer(lines[:600], truncation=True, max_length=128)
    features = []
    for i, ids in enumerate(encodings["input_ids"]):
        feature = {"input_ids": ids}
        if given_word_ids:
            feature["word_ids"] = encodings.word_ids(i)
        features.append(feature)
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(whole_word=True), seed=3)
    selected_total = eligible_total = multi_piece_words = 0
    for start in range(0, len(features), BATCH):
        chunk = features[start : start + BATCH]
        batch = collator(chunk)
        selected = batch["labels"] != IGNORE_INDEX
        for row, feature in enumerate(chunk):
            words = encodings.word_ids(start + row)
            pieces: dict[int, set[bool]] = {}
            for position, word in enumerate(words):
                if word is not None:
                    pieces.setdefault(word, set()).add(bool(selected[row, position]))
            assert all(len(flags) == 1 for flags in pieces.values()), "a word was split"
            multi_piece_words += sum(words.count(w) > 1 for w in pieces if True in pieces[w])
            eligible_total += sum(w is not None for w in words)
        selected_total += selected.sum().item()
    assert multi_piece_words > 100  # the check above was exercised on words of several pieces
    assert abs(selected_total / eligible_total - 0.15) <= 0.01


def runs(mask: torch.Tensor) -> list[int]:
    lengths = []
    for row in mask.tolist():
        run = 0
        for value in row + [False]:
            if value:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    return lengths


@pytest.mark.parametrize("span_lambda", [1.0, 3.0])
def test_poisson_span_masking(tokenizer, packed, span_lambda):
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(span_lambda=span_lambda), seed=5)
    batches = collate_all(collator, packed)
    original = torch.tensor([f["input_ids"] for f in packed])
    selected = torch.cat([b["labels"] != IGNORE_INDEX for b in batches])
    eligible = ~torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (selected & ~eligible).any()
    assert abs(selected.sum().item() / eligible.sum().item() - 0.15) <= 0.01
    # Runs are cut only by special tokens (rare in 128-token blocks), so their mean is the
    # zero-truncated Poisson mean lambda / (1 - exp(-lambda)): 1.58 for 1, 3.16 for 3.
    lengths = torch.tensor(runs(selected), dtype=torch.float)
    expected = span_lambda / (1 - math.exp(-span_lambda))
    assert abs(lengths.mean().item() - expected) <= 0.1 * expected, (lengths.mean(), expected)
    assert abs(lengths.mean().item() - span_lambda) <= 0.6 * span_lambda


def test_spans_of_whole_words(tokenizer, lines):
    encodings = tokenizer(lines[:64], truncation=True, max_length=128, padding=True, return_tensors="pt")
    ids = encodings["input_ids"]
    eligible = encodings["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    word_ids = word_ids_from_continuation(ids, continuation_table(tokenizer), eligible)
    selected = select_spans(eligible, 0.2, 2.0, torch.Generator().manual_seed(0), word_ids=word_ids)
    for row in range(len(ids)):
        for word in word_ids[row].unique().tolist():
            if word >= 0:
                assert selected[row][word_ids[row] == word].unique().numel() == 1


def test_selection_functions_are_pure_and_seeded():
    eligible = torch.rand(8, 50, generator=torch.Generator().manual_seed(0)) > 0.1
    word_ids = (eligible.long().cumsum(1) // 2).masked_fill(~eligible, -1)
    for select in (
        lambda g: select_tokens(eligible, 0.2, g),
        lambda g: select_whole_words(word_ids, 0.2, g),
        lambda g: select_spans(eligible, 0.2, 3.0, g),
    ):
        first, again = select(torch.Generator().manual_seed(7)), select(torch.Generator().manual_seed(7))
        other = select(torch.Generator().manual_seed(8))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)
        assert not (first & ~eligible).any()


def test_seeded_collator_determinism(tokenizer, packed):
    noise = NoiseConfig(whole_word=True, substitute_prob=0.05)
    first = collate_all(DataCollatorForDenoising(tokenizer, noise, seed=11), packed[:64])
    again = collate_all(DataCollatorForDenoising(tokenizer, noise, seed=11), packed[:64])
    other = collate_all(DataCollatorForDenoising(tokenizer, noise, seed=12), packed[:64])
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first[0]["labels"], other[0]["labels"])


def test_substitution_only_touches_eligible_unselected_tokens(tokenizer, packed):
    noise = NoiseConfig(mask_prob=0.1, substitute_prob=0.2)
    batches = collate_all(DataCollatorForDenoising(tokenizer, noise, seed=2), packed[:64])
    original = torch.tensor([f["input_ids"] for f in packed[:64]]).reshape(-1)
    corrupted, labels = stack(batches, "input_ids"), stack(batches, "labels")
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    changed_unlabelled = (corrupted != original) & (labels == IGNORE_INDEX)
    assert not (changed_unlabelled & special).any()
    rate = changed_unlabelled.sum().item() / ((~special) & (labels == IGNORE_INDEX)).sum().item()
    assert abs(rate - 0.2) <= 0.02


def test_delete_tokens_keeps_order_and_repads():
    ids = torch.arange(1, 13).reshape(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    drop = torch.tensor([[0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    new_ids, new_mask = delete_tokens(ids, mask, drop, pad_token_id=0)
    assert new_ids.tolist() == [[1, 3, 5, 6], [7, 8, 10, 0]]
    assert new_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_noise_config_from_dict_and_validation():
    assert NoiseConfig.from_dict({"mask_prob": 0.3, "whole_word": True}) == NoiseConfig(mask_prob=0.3, whole_word=True)
    assert NoiseConfig.from_dict(NoiseConfig(span_lambda=3).to_dict()).span_lambda == 3
    assert NoiseConfig(mask_prob=0, delete_prob=0.6, decoder_mask_prob=0.6).mask_prob == 0
    for bad in (
        {"mask_prob": 0},
        {"mask_prob": 1.0},
        {"mask_prob": -0.1},
        {"mask_prob": "0.15"},
        {"mask_token_frac": 0.95, "random_token_frac": 0.1},
        {"random_token_frac": 1.5},
        {"span_lambda": 0},
        {"delete_prob": 0.3},
        {"decoder_mask_prob": 1.2},
        {"mask_prob": 0.15, "maks_prob": 0.2},
    ):
        with pytest.raises(ConfigError):
            NoiseConfig.from_dict(bad)
