"""The training loop on tiny configurations: loss falls, outputs are complete, resume after SIGKILL is
bit-exact, half-written checkpoints are ignored, NaN stops the run, bad configs fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, max_abs_diff, read_log, tiny_recipe, train_until_killed, weights
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
)

from maskae import MaskAEForMaskedLM
from maskae.cli import main
from maskae.errors import CheckpointError, ConfigError, TokenizerError
from maskae.training import run as pretraining
from maskae.training import checkpoints
from maskae.training import trainer as training
from maskae.training.recipe import load_recipe



pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def test_loss_falls_and_run_writes_everything(tmp_path):
    recipe = tiny_recipe(None, "tokenizer.train.vocab_size=200", "training.max_steps=30", "training.save_steps=10",
                         "training.save_total_limit=2", "training.logging_steps=5", "training.eval_steps=15",
                         "training.lr=1e-2")
    results = pretraining.train(recipe, tmp_path)

    log = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    assert all({"step", "loss", "lr", "tokens_per_s", "data_wait_s"} <= r.keys() for r in log)
    assert all(0 <= r["data_wait_s"] < r["elapsed_s"] for r in log)
    assert all(r["tokens_per_s"] > 0 for r in log)
    assert log[0]["loss"] < 5.4  # about ln(200) at the start
    assert (log[-1]["loss"] + log[-2]["loss"]) / 2 < log[0]["loss"] - 0.5, [r["loss"] for r in log]
    assert log[-1]["lr"] == pytest.approx(0.0)  # linear decay to zero at max_steps
    evals = read_log(tmp_path / "eval_log.jsonl")
    assert [r["step"] for r in evals] == [15, 30]

    # the newest two checkpoints are kept, each complete with its resolved recipe
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-30"]
    assert not list(tmp_path.glob("*.tmp"))
    assert load_recipe(tmp_path / "checkpoint-30" / "recipe.yaml") == recipe

    # the final model, its own tokenizer and the recipe sit at the root and load with the Auto classes
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved == pytest.approx(results)
    for key in ("masked_accuracy", "masked_loss", "perplexity", "pseudo_perplexity", "train_tokens_per_s",
                "train_wall_time_s"):
        assert key in saved
    assert saved["perplexity"] == pytest.approx(torch.tensor(saved["masked_loss"]).exp().item(), rel=1e-6)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == model.config.vocab_size == 200
    assert model.config.sparse_prediction is True
    assert max_abs_diff(weights(tmp_path / "checkpoint-30"), {k: v for k, v in model.state_dict().items()
                                                               if k in weights(tmp_path / "checkpoint-30")}) == 0
    assert load_recipe(tmp_path / "recipe.yaml") == recipe


def test_gradient_accumulation_equals_the_full_batch(tmp_path, small_tokenizer):
    """The loss is the token mean over the global batch, however it is cut into micro-batches."""
    common = ["model.dropout=0.0", "training.max_steps=4", "training.save_steps=100"]
    pretraining.train(tiny_recipe(small_tokenizer, *common), tmp_path / "full")
    pretraining.train(tiny_recipe(small_tokenizer, *common, "training.gradient_accumulation_steps=4"), tmp_path / "acc")
    full, acc = read_log(tmp_path / "full" / "log.jsonl"), read_log(tmp_path / "acc" / "log.jsonl")
    assert [r["loss"] for r in full] == pytest.approx([r["loss"] for r in acc], abs=1e-5)
    assert max_abs_diff(weights(tmp_path / "full"), weights(tmp_path / "acc")) < 1e-5


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, small_tokenizer):
    # dropout stays on: the restored RNG state matters too
    recipe = tiny_recipe(small_tokenizer, "training.max_steps=20", "training.save_steps=4",
                         "training.pseudo_perplexity_blocks=0")
    pretraining.train(recipe, tmp_path / "reference")

    killed = tmp_path / "killed"
    train_until_killed(recipe, killed, count=1)
    assert not (killed / "model.safetensors").exists()

    # debris a kill can leave: a checkpoint still being written, and one whose marker never came
    newest = checkpoints.latest_checkpoint(killed)
    step = int(newest.name.split("-")[1])
    (killed / f"checkpoint-{step + 8}.tmp").mkdir(exist_ok=True)
    (killed / f"checkpoint-{step + 8}.tmp" / "model.safetensors").write_bytes(b"partial")
    shutil.copytree(newest, killed / f"checkpoint-{step + 4}")
    (killed / f"checkpoint-{step + 4}" / checkpoints.COMPLETE_MARKER).unlink()
    assert checkpoints.latest_checkpoint(killed) == newest

    pretraining.train(recipe, killed, resume=True)
    assert max_abs_diff(weights(tmp_path / "reference"), weights(killed)) < 1e-5
    reference_log, resumed_log = read_log(tmp_path / "reference" / "log.jsonl"), read_log(killed / "log.jsonl")
    assert [r["step"] for r in resumed_log] == list(range(1, 21))
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in reference_log], abs=1e-6)


def test_only_marked_renamed_checkpoints_count(tmp_path):
    for name, marked in [("checkpoint-3", True), ("checkpoint-12", True), ("checkpoint-20.tmp", True),
                         ("checkpoint-15", False), ("checkpoint-x", True)]:
        (tmp_path / name).mkdir()
        if marked:
            (tmp_path / name / checkpoints.COMPLETE_MARKER).write_text("{}")
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-12"]
    assert checkpoints.latest_checkpoint(tmp_path).name == "checkpoint-12"
    assert checkpoints.latest_checkpoint(tmp_path / "none") is None


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_tokenizer, monkeypatch):
    calls = {"n": 0}
    real = MaskAEForMaskedLM.forward

    def poisoned(self, *args, **kwargs):
        output = real(self, *args, **kwargs)
        if self.training and torch.is_grad_enabled():  # training steps, not evaluation
            calls["n"] += 1
            if calls["n"] == 7:
                output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(MaskAEForMaskedLM, "forward", poisoned)
    with pytest.raises(training.TrainingDivergedError) as error:
        pretraining.train(tiny_recipe(small_tokenizer, "training.pseudo_perplexity_blocks=0"), tmp_path)
    message = str(error.value)
    assert "nan at step 7" in message and "checkpoint-4" in message and "\n" not in message
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-4"]
    assert not (tmp_path / "model.safetensors").exists()
    assert max(r["step"] for r in read_log(tmp_path / "log.jsonl")) == 6


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("training:\n  lrr: 0.1\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "maskae train: error: unknown recipe key training.lrr; did you mean training.lr?"


def test_run_level_errors(tmp_path, small_tokenizer):
    with pytest.raises(ConfigError, match="multiple of 3"):
        pretraining.train(tiny_recipe(small_tokenizer, "training.gradient_accumulation_steps=3"), tmp_path / "a")

    # a backbone whose embeddings are fewer than the tokenizer's tokens
    torch.manual_seed(0)
    backbone = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(backbone)
    with pytest.raises(TokenizerError, match="200 tokens but backbone .* has only 99 embeddings"):
        pretraining.train(tiny_recipe(small_tokenizer, f"model.backbone={backbone}"), tmp_path / "b")

    (tmp_path / "c" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "c" / "checkpoint-4" / checkpoints.COMPLETE_MARKER).write_text("{}")
    with pytest.raises(CheckpointError, match="--resume"):
        pretraining.train(tiny_recipe(small_tokenizer), tmp_path / "c")


@pytest.fixture(scope="session")
def tiny_bert_backbone(tmp_path_factory, small_tokenizer) -> Path:
    """A 4-layer random BERT saved with the shared 200-token tokenizer: a local stand-in for a Hub BERT."""
    path = tmp_path_factory.mktemp("bert-backbone")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=200, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    AutoTokenizer.from_pretrained(small_tokenizer).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "name, hub_id, overrides, expected",
    [
        ("bert-linear-decoder.yaml", "google-bert/bert-base-uncased", ["model.split_layer=4"],
         {"split_layer": 4, "decoder": "linear", "decoder_layers": 0}),
        ("split-6-6.yaml", "google-bert/bert-base-uncased", ["model.split_layer=2", "training.mixed_precision=no"],
         {"split_layer": 2, "decoder": "layers", "decoder_layers": 2}),
        ("minilm-split.yaml", "sentence-transformers/all-MiniLM-L6-v2", [],
         {"split_layer": 4, "decoder": "layers", "decoder_layers": 2}),
    ],
)
def test_backbone_recipes_train_on_a_shrunken_configuration(tmp_path, request, name, hub_id, overrides, expected):
    assert load_recipe(RECIPES / name).model.backbone == hub_id  # the recipe itself names the Hub checkpoint
    backbone = request.getfixturevalue("minilm_path" if "minilm" in name else "tiny_bert_backbone")
    shrink = [f"model.backbone={backbone}", "data.block_size=32", "data.max_train_blocks=16", "data.max_eval_blocks=4",
              "training.batch_size=4", "training.max_steps=2", "training.warmup_steps=1", "training.save_steps=2",
              "training.eval_steps=null", "training.pseudo_perplexity_blocks=1", "training.eval_batch_size=4"]
    results = pretraining.train(load_recipe(RECIPES / name, [*shrink, *overrides]), tmp_path)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert {key: getattr(model.config, key) for key in expected} == expected
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_log(tmp_path / "log.jsonl"))
    assert 0 <= results["masked_accuracy"] <= 1 and results["pseudo_perplexity"] > 1
    assert AutoTokenizer.from_pretrained(tmp_path).vocab_size == AutoTokenizer.from_pretrained(backbone).vocab_size


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_bf16_on_a_cpu_follows_fp32_where_it_has_a_bf16_unit_and_is_fp32_elsewhere(tmp_path, small_tokenizer,
                                                                                    monkeypatch, caplog):
    from accelerate.state import AcceleratorState

    from maskae.utils import host

    settings = ("training.max_steps=12", "training.save_steps=12", "training.pseudo_perplexity_blocks=0")
    pretraining.train(tiny_recipe(small_tokenizer, *settings), tmp_path / "fp32")
    bf16 = tiny_recipe(small_tokenizer, *settings, "training.mixed_precision=bf16")

    monkeypatch.setattr(host, "has_bf16_unit", lambda: False)
    AcceleratorState._reset_state(reset_partial_state=True)
    with caplog.at_level("WARNING"):
        pretraining.train(bf16, tmp_path / "fallback")
    assert "no bf16 unit" in caplog.text
    assert max_abs_diff(weights(tmp_path / "fp32"), weights(tmp_path / "fallback")) == 0

    monkeypatch.setattr(host, "has_bf16_unit", lambda: True)  # autocast runs on any CPU, if slowly
    AcceleratorState._reset_state(reset_partial_state=True)
    pretraining.train(bf16, tmp_path / "bf16")
    fp32_loss = [r["loss"] for r in read_log(tmp_path / "fp32" / "log.jsonl")]
    bf16_loss = [r["loss"] for r in read_log(tmp_path / "bf16" / "log.jsonl")]
    assert bf16_loss != fp32_loss  # bf16 really ran
    assert bf16_loss == pytest.approx(fp32_loss, rel=0.02)  # and follows the fp32 curve
    assert bf16_loss[-1] < bf16_loss[0]
