"""Replaced-token detection (ELECTRA) on a split encoder: the generator's samples, the detector's labels
and loss, the shared encoder (embed, AutoModel, stock export), the recipe path (reproducible, exact
resume) and its configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import max_abs_diff, read_log, tiny_recipe, tiny_stock, train_until_killed, weights
from torch.nn import functional as F
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    BertConfig,
    BertModel,
    DistilBertConfig,
)

from maskae import Embedder, MaskAEConfig, MaskAEForReplacedTokenDetection, export_stock
from maskae.cli import main
from maskae.data.corpus import default_corpus
from maskae.errors import ConfigError, ExportError
from maskae.evaluation.finetuning import prepare_encoder
from maskae.evaluation.mlm import evaluate_mlm
from maskae.metrics.masked_lm import masked_lm_metrics
from maskae.modeling_maskae import IGNORE_INDEX, sample_tokens
from maskae.training import run as pretraining
from maskae.training.recipe import validate

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def tiny_rtd(**kwargs) -> MaskAEForReplacedTokenDetection:
    torch.manual_seed(0)
    base = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32)
    return MaskAEForReplacedTokenDetection(MaskAEConfig(base_config=base, split_layer=2, objective="rtd", **kwargs))


def masked_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (3, 12), generator=generator)
    attention_mask = torch.ones_like(ids)
    attention_mask[2, 9:] = 0
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[:, 1::3] = True
    targets &= attention_mask.bool()
    labels = torch.where(targets, ids, IGNORE_INDEX)
    return {"input_ids": ids.masked_fill(targets, 4), "attention_mask": attention_mask, "labels": labels}


def test_samples_follow_the_generator_softmax_by_inverse_cdf():
    logits = torch.tensor([[0.1, 0.2, 0.7]]).log().expand(6, 3)
    uniforms = torch.tensor([0.0, 0.05, 0.11, 0.29, 0.31, 0.999])
    assert sample_tokens(logits, uniforms).tolist() == [0, 0, 1, 1, 2, 2]
    many = sample_tokens(torch.tensor([[0.1, 0.2, 0.7]]).log().expand(20000, 3), torch.rand(20000))
    assert torch.bincount(many, minlength=3).div(20000).tolist() == pytest.approx([0.1, 0.2, 0.7], abs=0.015)


def test_detector_labels_exactly_the_replaced_tokens_and_loss_is_electras():
    model, batch = tiny_rtd(), masked_batch()
    read = {}
    detect = model.detect

    def spy(text, *args):
        read["text"] = text
        return detect(text, *args)

    model.detect = spy
    torch.manual_seed(1)
    output = model(**batch)
    targets = batch["labels"] != IGNORE_INDEX
    original = torch.where(targets, batch["labels"], batch["input_ids"])
    text = read["text"]
    assert torch.equal(text[~targets], original[~targets])  # only the masked positions are filled
    assert torch.equal(output.replaced_labels, (text != original).float())
    assert 0 < output.replaced_labels.sum() <= targets.sum()
    assert output.logits.shape == (int(targets.sum()), 50)  # the generator's, at the targets

    mask = batch["attention_mask"].float()
    detection = (F.binary_cross_entropy_with_logits(output.replaced_logits, output.replaced_labels, reduction="none")
                 * mask).sum() / mask.sum()
    generator_loss = F.cross_entropy(output.logits, batch["labels"][targets])
    assert output.loss.item() == pytest.approx((generator_loss + 50 * detection).item(), rel=1e-5)


def test_evaluation_scores_the_same_samples_and_leaves_the_training_rng_alone():
    model = tiny_rtd()
    state = torch.get_rng_state()
    first = masked_lm_metrics(model, [masked_batch(0), masked_batch(1)])
    assert torch.equal(torch.get_rng_state(), state)
    assert masked_lm_metrics(model, [masked_batch(0), masked_batch(1)]) == first
    assert {"masked_accuracy", "replaced_accuracy", "replaced_loss"} <= first.keys()


def test_generator_defaults_are_written_into_the_config():
    config = tiny_rtd().config
    assert (config.generator_hidden_size, config.generator_layers) == (32, 4)  # a quarter, but at least 32
    generator = tiny_rtd(generator_hidden_size=64, generator_layers=1).generator.config.base_config
    assert (generator.hidden_size, generator.num_hidden_layers, generator.num_attention_heads,
            generator.intermediate_size) == (64, 1, 1, 256)


def test_encoder_is_the_same_maskae_model_for_embed_automodel_and_stock_export(tmp_path):
    model = tiny_rtd().eval()
    model.save_pretrained(tmp_path / "rtd")
    ids = masked_batch()["input_ids"]
    code = model.maskae(ids).code

    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path / "rtd").eval()
    assert isinstance(reloaded, MaskAEForReplacedTokenDetection)
    assert torch.equal(reloaded(ids).replaced_logits, model(ids).replaced_logits)
    assert torch.equal(AutoModel.from_pretrained(tmp_path / "rtd")(ids).code, code)

    export_stock(model, tmp_path / "encoder", part="encoder")
    stock = BertModel.from_pretrained(tmp_path / "encoder").eval()
    assert torch.allclose(stock(ids).last_hidden_state, code, atol=1e-6)
    with pytest.raises(ExportError, match="part='encoder'"):
        export_stock(model, tmp_path / "full", part="full")
    assert torch.equal(Embedder(model, tokenizer=None, max_length=32).model(ids).code, code)


@pytest.mark.parametrize("family", ["bert", "roberta", "modernbert"])
def test_split_from_a_stock_checkpoint_keeps_its_encoder_and_trains_a_fresh_generator(family, tmp_path):
    stock = tiny_stock(family).eval()
    stock.save_pretrained(tmp_path / "stock")
    model = MaskAEForReplacedTokenDetection.from_backbone(str(tmp_path / "stock"), split_layer=2).eval()
    assert model.config.objective == "rtd"
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3]])
    reference = stock(ids, output_hidden_states=True).hidden_states[2]
    assert torch.allclose(model.maskae(ids).code, reference, atol=1e-5)
    model.train()(**masked_batch()).loss.backward()  # ids below 50 of the stock model's 99
    assert model.generator.maskae.get_input_embeddings().weight.grad.abs().sum() > 0


def test_loading_an_rtd_checkpoint_as_a_masked_lm_is_refused(tmp_path):
    tiny_rtd().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="load it with MaskAEForReplacedTokenDetection"):
        AutoModelForMaskedLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"bottleneck": "sentence", "decoder": "transformer", "decoder_layers": 1}, "sentence bottleneck"),
    ({"rtd_weight": 0.0}, "rtd_weight"),
    ({"generator_layers": 0}, "generator_layers"),
    ({"objective": "electra"}, "unknown objective"),
])
def test_bad_rtd_configs_say_what_to_change(kwargs, message):
    base = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    with pytest.raises(ConfigError, match=message):
        MaskAEConfig(base_config=base, split_layer=1, **{"objective": "rtd", **kwargs})


def test_a_family_without_the_generator_keys_is_refused():
    base = DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    with pytest.raises(ConfigError, match="has no intermediate_size"):
        MaskAEConfig(base_config=base, split_layer=1, objective="rtd")


def test_rtd_recipe_is_reproducible_resumes_exactly_and_its_encoder_is_usable(tmp_path, small_tokenizer, capsys):
    recipe = tiny_recipe(small_tokenizer, "training.max_steps=12", "training.save_steps=4",
                         "training.pseudo_perplexity_blocks=0", "training.whiten_at_end=40", name="electra-wikitext2.yaml")
    assert recipe.model.objective == "rtd"
    results = pretraining.train(recipe, tmp_path / "a")
    pretraining.train(recipe, tmp_path / "b")
    assert max_abs_diff(weights(tmp_path / "a"), weights(tmp_path / "b")) == 0  # bit for bit
    assert 0.5 < results["replaced_accuracy"] <= 1 and "masked_accuracy" in results
    assert all(math.isfinite(r["loss"]) for r in read_log(tmp_path / "a" / "log.jsonl"))
    assert (tmp_path / "a" / "whitening.safetensors").is_file()

    killed = tmp_path / "killed"
    train_until_killed(recipe, killed, count=1)
    pretraining.train(recipe, killed, resume=True)
    assert max_abs_diff(weights(tmp_path / "a"), weights(killed)) < 1e-5  # the generator's samples repeat
    assert [r["loss"] for r in read_log(killed / "log.jsonl")] == pytest.approx(
        [r["loss"] for r in read_log(tmp_path / "a" / "log.jsonl")], abs=1e-5)

    encoder = prepare_encoder(tmp_path / "a", tmp_path / "exported")
    assert BertModel.from_pretrained(encoder.checkpoint).config.num_hidden_layers == recipe.model.split_layer
    with pytest.raises(ConfigError, match="drop --whole-stack"):
        prepare_encoder(tmp_path / "a", tmp_path / "whole", whole_stack=True)

    scored = evaluate_mlm(tmp_path / "a", default_corpus("validation"), block_size=32, limit=8, pseudo_blocks=1)
    assert 0.5 < scored["replaced_accuracy"] <= 1 and scored["pseudo_perplexity"] > 1

    assert main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "hub")]) == 2
    assert "share its encoder with --encoder-only" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "hub"), "--encoder-only"]) == 0
    assert BertModel.from_pretrained(tmp_path / "hub").config.num_hidden_layers == recipe.model.split_layer
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "ELECTRA's discriminator" in card and "Replaced-token detection accuracy" in card
    assert "trained to reconstruct" not in card


def test_rtd_with_growth_is_refused(small_tokenizer):
    with pytest.raises(ConfigError, match="growth.stages cannot grow"):
        validate(tiny_recipe(small_tokenizer, "model.objective=rtd", "model.split_layer=1",
                             "growth.stages=[{layers: 1, share: 1.0}]"))
