"""DataCollatorForDenoising: drop-in behaviour, packed fast path, checkpointable state, sentence-bottleneck batches."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from maskae import DataCollatorForDenoising, NoiseConfig, TokenizerError
from maskae.data.noise import IGNORE_INDEX

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokenization splits unbelievable words into pieces.",
    "A short one.",
    "Masked autoencoders reconstruct noisy text from a compact code, layer by layer.",
] * 4


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture
def features(tokenizer):
    return [{"input_ids": tokenizer(text)["input_ids"]} for text in SENTENCES]


@pytest.fixture
def packed_features():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(1000, 29000, (16, 64), generator=generator)
    rows[:, 0], rows[:, 31], rows[:, -1] = 101, 102, 102
    return [{"input_ids": row.tolist()} for row in rows]


def test_same_call_and_outputs_as_transformers_collator(tokenizer, features):
    ours = DataCollatorForDenoising(tokenizer, seed=0)(features)
    reference = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)(features)
    assert set(ours) == set(reference) == {"input_ids", "attention_mask", "labels"}
    for key in ours:
        assert ours[key].shape == reference[key].shape
        assert ours[key].dtype == reference[key].dtype
    assert torch.equal(ours["attention_mask"], reference["attention_mask"])


def test_pad_to_multiple_of(tokenizer, features):
    batch = DataCollatorForDenoising(tokenizer, seed=0, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_accepts_tokenizer_output_with_attention_mask_and_tensors(tokenizer):
    encoded = [tokenizer(text) for text in SENTENCES[:3]]
    as_tensors = [{"input_ids": torch.tensor(e["input_ids"])} for e in encoded]
    collator = DataCollatorForDenoising(tokenizer, seed=0)
    with_mask = collator([dict(e) for e in encoded])
    collator.load_state_dict(DataCollatorForDenoising(tokenizer, seed=0).state_dict())
    from_tensors = collator(as_tensors)
    assert all(torch.equal(with_mask[k], from_tensors[k]) for k in with_mask)


def test_packed_features_take_the_fast_path(tokenizer, packed_features):
    batch = DataCollatorForDenoising(tokenizer, seed=0)(packed_features)
    assert batch["input_ids"].shape == (16, 64)
    assert batch["attention_mask"].all()
    targets = batch["labels"] != IGNORE_INDEX
    assert not targets[:, [0, 31, 63]].any()
    assert targets.sum(1).min() >= 1


def test_dataloader_and_resume_to_identical_batches(tokenizer, packed_features):
    noise = NoiseConfig(span_lambda=2.0)
    collator = DataCollatorForDenoising(tokenizer, noise, seed=42)
    loader = DataLoader(packed_features, batch_size=4, collate_fn=collator)
    batches = iter(loader)
    next(batches)
    state = collator.state_dict()
    expected = [next(batches), next(batches)]

    resumed = DataCollatorForDenoising(tokenizer, noise, seed=7)
    resumed.load_state_dict(state)
    again = [resumed(packed_features[4:8]), resumed(packed_features[8:12])]
    for a, b in zip(expected, again):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_accelerate_checkpoint_restores_the_generator(tokenizer, packed_features, tmp_path):
    accelerator = Accelerator(cpu=True)
    collator = DataCollatorForDenoising(tokenizer, seed=3)
    accelerator.register_for_checkpointing(collator)
    collator(packed_features[:4])
    accelerator.save_state(str(tmp_path / "checkpoint"))
    expected = collator(packed_features[4:8])
    collator(packed_features[8:12])  # move on, then rewind through the checkpoint
    accelerator.load_state(str(tmp_path / "checkpoint"))
    restored = collator(packed_features[4:8])
    assert all(torch.equal(expected[k], restored[k]) for k in expected)


def test_unseeded_collators_differ(tokenizer, packed_features):
    first = DataCollatorForDenoising(tokenizer)(packed_features)
    second = DataCollatorForDenoising(tokenizer)(packed_features)
    assert not torch.equal(first["labels"], second["labels"])


def test_sentence_bottleneck_batch(tokenizer, packed_features):
    noise = NoiseConfig(mask_prob=0.1, delete_prob=0.1, decoder_mask_prob=0.6)
    batch = DataCollatorForDenoising(tokenizer, noise, seed=0)(packed_features)
    clean = torch.tensor([f["input_ids"] for f in packed_features])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_attention_mask"}

    decoder_ids, labels = batch["decoder_input_ids"], batch["labels"]
    targets = labels != IGNORE_INDEX
    assert torch.equal(labels[targets], clean[targets])
    assert (decoder_ids[targets] == tokenizer.mask_token_id).all()
    assert torch.equal(decoder_ids[~targets], clean[~targets])
    assert not targets[:, 0].any(), "position 0 carries the sentence vector and is never masked"
    eligible = ~torch.isin(clean, torch.tensor(tokenizer.all_special_ids))
    assert abs(targets.sum().item() / eligible.sum().item() - 0.6) <= 0.02
    assert torch.equal(batch["decoder_attention_mask"], torch.ones_like(clean))

    # The encoder's copy lost about 10% of its ordinary tokens and was re-padded.
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max() < 64
    removed = (64 - lengths).sum().item() / eligible.sum().item()
    assert abs(removed - 0.1 * (1 - 0.1)) <= 0.03
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert (batch["input_ids"][:, 0] == 101).all()


def test_deletion_only_keeps_a_subsequence(tokenizer, features):
    noise = NoiseConfig(mask_prob=0, delete_prob=0.6, decoder_mask_prob=0.5)
    batch = DataCollatorForDenoising(tokenizer, noise, seed=0, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape[1] % 8 == 0
    for row, feature in enumerate(features):
        kept = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        original = iter(feature["input_ids"])
        assert all(token in original for token in kept)  # an ordered subsequence
        assert kept[0] == tokenizer.cls_token_id and kept[-1] == tokenizer.sep_token_id
        assert len(kept) < len(feature["input_ids"])


def test_sentence_batch_runs_through_the_model(tmp_path):
    from conftest import tiny_stock

    from maskae import MaskAEForMaskedLM

    tiny_stock("bert").save_pretrained(tmp_path)
    model = MaskAEForMaskedLM.from_backbone(
        str(tmp_path), split_layer=2, decoder="transformer", decoder_layers=1, bottleneck="sentence"
    ).eval()
    ids = torch.randint(5, 95, (4, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3

    class Tiny:  # the tiny model's vocabulary: 99 ids, special ids 0..4
        mask_token_id, pad_token_id, cls_token_id, sep_token_id = 4, 0, 2, 3
        all_special_ids = [0, 1, 2, 3, 4]
        name_or_path = "tiny"

        def __len__(self):
            return 99

    noise = NoiseConfig(mask_prob=0.15, delete_prob=0.2, decoder_mask_prob=0.6)
    batch = DataCollatorForDenoising(Tiny(), noise, seed=0)([{"input_ids": row.tolist()} for row in ids])
    output = model(**batch)
    assert torch.isfinite(output.loss)


def test_tokenizer_without_mask_token(tokenizer):
    broken = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    broken.mask_token = None
    with pytest.raises(TokenizerError, match="no mask token"):
        DataCollatorForDenoising(broken)


def test_dataloader_workers_draw_different_noise(tokenizer, packed_features):
    """Each worker holds a copy of the collator; without reseeding they would all mask alike."""
    same_rows = [packed_features[0]] * 8
    collator = DataCollatorForDenoising(tokenizer, seed=0)
    loader = DataLoader(same_rows, batch_size=4, num_workers=2, collate_fn=collator,
                        generator=torch.Generator().manual_seed(0))
    first, second = list(loader)
    assert not torch.equal(first["labels"], second["labels"])
    again_first, again_second = list(DataLoader(same_rows, batch_size=4, num_workers=2, collate_fn=collator,
                                                generator=torch.Generator().manual_seed(0)))
    assert torch.equal(first["labels"], again_first["labels"])


def test_whole_word_decoder_copy_keeps_words_whole(tokenizer):
    texts = ["Tokenization splits unbelievable words into pieces, repeatedly and unbelievably."] * 8
    encodings = tokenizer(texts)
    features = [{"input_ids": ids, "word_ids": encodings.word_ids(i)} for i, ids in enumerate(encodings["input_ids"])]
    noise = NoiseConfig(whole_word=True, mask_prob=0.2, decoder_mask_prob=0.5)
    batch = DataCollatorForDenoising(tokenizer, noise, seed=0)(features)
    targets = batch["labels"] != IGNORE_INDEX
    for row in range(len(texts)):
        words = encodings.word_ids(row)
        for word in set(w for w in words if w is not None):
            assert len({bool(targets[row, p]) for p, w in enumerate(words) if w == word}) == 1
    assert targets.any()
