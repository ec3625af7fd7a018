"""Per-rank, counter-based batches: a sequence's noise depends only on (seed, epoch, index), so ranks,
workers and resume points cannot change a global batch, and each rank noises only its own rows."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from conftest import tiny_recipe
from maskae import DataCollatorForDenoising, NoiseConfig
from maskae.data.noise import IGNORE_INDEX, KeyedRandom
from maskae.data.sampling import StepBatchSampler, TaggedRows
from maskae.training.trainer import Trainer

NOISES = {
    "tokens": NoiseConfig(mask_prob=0.3),
    "whole words": NoiseConfig(mask_prob=0.3, whole_word=True),
    "spans": NoiseConfig(mask_prob=0.3, span_lambda=3.0),
    "substitution": NoiseConfig(mask_prob=0.15, substitute_prob=0.1),
    "sentence bottleneck with deletion": NoiseConfig(mask_prob=0.15, delete_prob=0.1, decoder_mask_prob=0.5),
}
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokenization splits unbelievable words into pieces.",
    "A short one.",
    "Masked autoencoders reconstruct noisy text from a compact code, layer by layer, and keep the code.",
    "Counter-based noise keeps every sequence's corruption fixed whatever the batch around it.",
]


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def tagged(tokenizer, order: list[int], epoch: int = 0) -> list[dict]:
    return [{"input_ids": tokenizer(TEXTS[i])["input_ids"], "noise_epoch": epoch, "noise_index": i} for i in order]


def row(batch: dict[str, torch.Tensor], position: int) -> dict[str, list[int]]:
    """One row of a collated batch without its padding, per output."""
    decoder_side = {"decoder_input_ids", "decoder_attention_mask"} | ({"labels"} if "decoder_input_ids" in batch else set())
    masks = {key: batch["decoder_attention_mask" if key in decoder_side else "attention_mask"][position].bool()
             for key in batch}
    return {key: value[position][masks[key]].tolist() for key, value in batch.items()}


@pytest.mark.parametrize("noise", NOISES.values(), ids=NOISES.keys())
def test_a_rows_noise_ignores_the_rest_of_the_batch(tokenizer, noise):
    collator = DataCollatorForDenoising(tokenizer, noise, seed=7)
    full = collator(tagged(tokenizer, [0, 1, 2, 3, 4]))
    # another order, other neighbours, another padded width: row 2 ("A short one.") is noised the same
    alone = collator(tagged(tokenizer, [2]))
    shuffled = collator(tagged(tokenizer, [4, 2, 0]))
    assert row(full, 2) == row(alone, 0) == row(shuffled, 1)
    assert row(full, 4) == row(shuffled, 0)
    assert (full["labels"] != IGNORE_INDEX).any()


def test_epoch_and_seed_change_the_noise(tokenizer):
    noise = NoiseConfig(mask_prob=0.5)
    first = DataCollatorForDenoising(tokenizer, noise, seed=7)(tagged(tokenizer, [3]))
    assert not torch.equal(first["labels"], DataCollatorForDenoising(tokenizer, noise, seed=7)(tagged(tokenizer, [3], epoch=1))["labels"])
    assert not torch.equal(first["labels"], DataCollatorForDenoising(tokenizer, noise, seed=8)(tagged(tokenizer, [3]))["labels"])


def test_keyed_uniforms_are_uniform_and_independent_of_width():
    source = KeyedRandom(0, torch.zeros(20_000, dtype=torch.int64), torch.arange(20_000))
    draws = source.uniform((20_000, 64))
    assert 0 <= float(draws.min()) and float(draws.max()) < 1
    assert abs(float(draws.mean()) - 0.5) < 2e-3 and abs(float(draws.var()) - 1 / 12) < 2e-3
    assert abs(float(torch.corrcoef(torch.stack([draws[:, 0], draws[:, 1]]))[0, 1])) < 0.03
    narrow = KeyedRandom(0, torch.zeros(3, dtype=torch.int64), torch.arange(3)).uniform((3, 5))
    assert torch.equal(narrow, draws[:3, :5])


def test_keyed_masking_keeps_the_mask_rate(tokenizer):
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(mask_prob=0.15), seed=0)
    rows = [{"input_ids": [101] + list(range(2000, 2126)) + [102], "noise_epoch": 0, "noise_index": i} for i in range(400)]
    batch = collator(rows)
    share = float((batch["labels"] != IGNORE_INDEX).sum()) / (400 * 126)
    assert abs(share - 0.15) < 0.005
    masked = batch["input_ids"][batch["labels"] != IGNORE_INDEX]
    assert abs(float((masked == tokenizer.mask_token_id).float().mean()) - 0.8) < 0.03


@pytest.mark.parametrize("processes", [2, 4, 8])
def test_ranks_split_every_global_batch_and_noise_only_their_rows(tokenizer, processes):
    rows = [{"input_ids": [101] + [2000 + (i * 7 + j) % 900 for j in range(30)] + [102]} for i in range(40)]
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(mask_prob=0.3), seed=3)
    data = TaggedRows(Dataset.from_list(rows))
    whole = StepBatchSampler(len(rows), 16, seed=5)
    shares = [StepBatchSampler(len(rows), 16, seed=5, rank=r, num_processes=processes) for r in range(processes)]
    for step, (keys, *rank_keys) in enumerate(zip(whole, *shares)):
        if step == 7:  # two epochs and more (2 batches per epoch)
            break
        assert all(len(k) == 16 // processes for k in rank_keys)  # each rank collates only its rows
        assert [key for k in rank_keys for key in k] == keys
        global_batch = collator(data.__getitems__(keys))
        local = [collator(data.__getitems__(k)) for k in rank_keys]
        for name, value in global_batch.items():
            assert torch.equal(torch.cat([batch[name] for batch in local]), value)


def test_a_sampler_started_at_step_k_continues_the_same_sequence():
    full = StepBatchSampler(50, 8, seed=1, rank=1, num_processes=2)
    expected = [keys for _, keys in zip(range(20), full)]
    for start in (0, 3, 6, 13):
        late = StepBatchSampler(50, 8, seed=1, rank=1, num_processes=2, start_step=start)
        assert [keys for _, keys in zip(range(20 - start), late)] == expected[start:]
    assert {epoch for keys in expected for epoch, _ in keys} == {0, 1, 2, 3}  # 6 batches per epoch


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_workers_build_the_same_batches_as_the_loop(tmp_path, small_tokenizer):
    def first_batches(workers: int, out) -> list[dict[str, torch.Tensor]]:
        trainer = Trainer(tiny_recipe(small_tokenizer, f"training.num_workers={workers}", "training.batch_size=4"), out)
        trainer.prepare()
        batches = trainer.batches()
        return [next(batches) for _ in range(5)]

    plain, workers = first_batches(0, tmp_path / "zero"), first_batches(2, tmp_path / "two")
    for a, b in zip(plain, workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dataloader_workers_and_prefetch_give_the_in_process_batches(tokenizer):
    rows = [{"input_ids": [101] + [2000 + (i * 13 + j) % 500 for j in range(20)] + [102]} for i in range(64)]
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(mask_prob=0.3, whole_word=True), seed=0)

    def batches(workers: int) -> list[dict[str, torch.Tensor]]:
        loader = DataLoader(TaggedRows(Dataset.from_list(rows)), batch_sampler=StepBatchSampler(len(rows), 8, seed=2), collate_fn=collator,
                            num_workers=workers, prefetch_factor=3 if workers else None)
        return [batch for _, batch in zip(range(12), loader)]

    for a, b in zip(batches(0), batches(2)):
        assert all(torch.equal(a[k], b[k]) for k in a)
