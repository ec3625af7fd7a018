"""`data.streaming: true` end to end: the trainer reads a stream, noises it as it noises map-style data,
and resumes exactly after a SIGKILL from the stream position saved in the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA, max_abs_diff, read_log, tiny_recipe, train_until_killed, weights

from maskae.data.corpus import load_corpus, tokenize_and_pack
from maskae.data.sampling import TaggedRows
from maskae.errors import CheckpointError, ConfigError
from maskae.training import run as pretraining
from maskae.training import checkpoints
from maskae.training import trainer as training
from maskae.utils.integrity import directory_records

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state", "private_datasets_cache")


@pytest.fixture
def corpus(tmp_path):
    """24 WikiText-2 lines in 4 shards, and 20 held-out lines."""
    lines = [line for line in (SHARED_DATA / "wikitext2" / "train.txt").read_text(encoding="utf-8").splitlines()
             if 8 < len(line.split()) < 25][:100]
    folder = tmp_path / "corpus"
    folder.mkdir()
    for shard in range(4):
        (folder / f"part-{shard}.txt").write_text("\n".join(lines[shard * 6 : shard * 6 + 6]) + "\n", encoding="utf-8")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join(lines[80:]) + "\n", encoding="utf-8")
    return folder, held_out


def streaming_recipe(tokenizer, corpus, *overrides: str):
    folder, held_out = corpus
    return tiny_recipe(tokenizer, "data.streaming=true", "data.max_train_blocks=null", f"data.train={folder}",
                       f"data.validation={held_out}", *overrides)


def test_streamed_batches_are_the_map_style_blocks_noised_alike(tmp_path, small_tokenizer, corpus):
    trainer = training.Trainer(streaming_recipe(small_tokenizer, corpus), tmp_path)
    trainer.prepare()
    streamed = trainer.batches()
    first = [next(streamed) for _ in range(3)]
    assert all("stream_state" in batch for batch in first)

    # the same corpus tokenized up front: within the first text batch its blocks come in the same order, and
    # block i of epoch 0 gets the same counter-based noise whichever way it was read
    blocks = tokenize_and_pack(load_corpus(corpus[0]), trainer.tokenizer, 32)
    rows = TaggedRows(blocks)
    for step, batch in enumerate(first):
        expected = trainer.collator(rows.__getitems__([(0, i) for i in range(step * 8, step * 8 + 8)]))
        assert all(torch.equal(batch[key], expected[key]) for key in expected)


def test_streaming_resume_after_sigkill_matches_uninterrupted_run(tmp_path, small_tokenizer, corpus):
    # one worker reads the stream; 40 steps of 8 blocks pass the end of the corpus, so the run crosses passes
    recipe = streaming_recipe(small_tokenizer, corpus, "training.max_steps=40", "training.save_steps=4",
                              "training.num_workers=1", "training.pseudo_perplexity_blocks=0")
    pretraining.train(recipe, tmp_path / "reference")
    reference_log = read_log(tmp_path / "reference" / "log.jsonl")
    assert reference_log[-1]["epoch"] >= 1  # a second pass started

    killed = tmp_path / "killed"
    train_until_killed(recipe, killed, count=2)

    pretraining.train(recipe, killed, resume=True)
    assert max_abs_diff(weights(tmp_path / "reference"), weights(killed)) < 1e-5
    resumed_log = read_log(killed / "log.jsonl")
    assert [r["step"] for r in resumed_log] == list(range(1, 41))
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in reference_log], abs=1e-6)
    assert [r["targets"] for r in resumed_log] == [r["targets"] for r in reference_log]


def test_a_stream_resumes_only_on_its_process_count(tmp_path, small_tokenizer, corpus):
    recipe = streaming_recipe(small_tokenizer, corpus, "training.max_steps=4", "training.save_steps=4")
    pretraining.train(recipe, tmp_path)
    # pretend two processes wrote it: the checkpoint then holds two stream positions (and records them)
    checkpoint = checkpoints.latest_checkpoint(tmp_path)
    state_file = checkpoint / "train_state.json"
    state = json.loads(state_file.read_text())
    state["streams"] = state["streams"] * 2
    state_file.write_text(json.dumps(state))
    marker = checkpoint / checkpoints.COMPLETE_MARKER
    marker.write_text(json.dumps({"step": 4, "files": directory_records(checkpoint, skip=(marker.name,))}))
    longer = streaming_recipe(small_tokenizer, corpus, "training.max_steps=8", "training.save_steps=4")
    with pytest.raises(CheckpointError, match=r"split over 2 process\(es\), not 1; resume it with 2"):
        training.Trainer(longer, tmp_path, resume=True).prepare()


@pytest.mark.parametrize("overrides, message", [
    (["training.num_workers=2"], "one worker per process"),
    (["data.validation=null"], "give a held-out corpus as data.validation"),
    (["data.max_train_blocks=10"], "bound the run with training.max_steps"),
])
def test_streaming_config_errors(tmp_path, small_tokenizer, corpus, overrides, message):
    with pytest.raises(ConfigError, match=message):
        training.Trainer(streaming_recipe(small_tokenizer, corpus, *overrides), tmp_path).prepare()
