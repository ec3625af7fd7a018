"""Adaptation (`maskae adapt --objective mlm|tsdae`): the anchors start at zero, a missing head warms up
alone, each objective trains a tiny model and MiniLM, the kept step follows its rule, resume is exact,
and bad input gets one line."""

import json

import pytest
import torch
from conftest import RECIPES, max_abs_diff, read_log, weights
from transformers import AutoModel

import maskae
from maskae.cli import main
from maskae.modeling_maskae import MaskAEForMaskedLM
from maskae.training.adaptation import AdaptationTrainer, anchor_loss, isotropy
from maskae.training.recipe import load_recipe
from maskae.training.run import train

SENTENCES = [f"w{i % 90} w{(i * 7) % 90} w{(i * 3) % 50}" + f" w{i % 11}" * (i % 5) for i in range(80)]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def adapt_recipe(model, corpus, output_dir, objective, layer, *overrides):
    return load_recipe(RECIPES / f"adapt-{objective}.yaml", [
        f"model.backbone={model}", f"model.split_layer={layer}", f"adapt.corpus=[{corpus}]",
        f"training.output_dir={output_dir}", "training.batch_size=16", "training.max_steps=6", "training.lr=1e-3",
        "training.eval_steps=2", "training.save_steps=3", "training.logging_steps=1", "training.eval_batch_size=8",
        "training.warmup_steps=0", "data.validation_fraction=0.2", "data.block_size=16", "adapt.max_eval_texts=16",
        *overrides,
    ])


def test_isotropy_of_a_cloud_and_of_a_line():
    torch.manual_seed(0)
    cloud = isotropy(torch.randn(4000, 8))
    assert cloud["isotropy"] > 0.95 and abs(cloud["mean_cosine"]) < 0.01
    line = isotropy(torch.randn(100, 1) * torch.ones(1, 8) + 5)
    assert line["isotropy"] == pytest.approx(1 / 8, rel=1e-6) and line["mean_cosine"] > 0.9


def test_anchors_start_at_zero_and_a_missing_head_warms_up_alone(minilm_path, corpus, tmp_path):
    trainer = AdaptationTrainer(adapt_recipe(minilm_path, corpus, tmp_path / "run", "mlm", 6, "adapt.head_warmup_steps=2",
                                             "adapt.l2_weight=1.0", "training.lr=1e-4"), tmp_path / "run")
    trainer.prepare()
    model, batches = trainer.model, trainer.batches()
    assert trainer.fresh == {name for name, _ in model.named_parameters() if name.startswith("head.")
                             and not name.endswith("decoder.weight")}  # all-MiniLM-L6-v2 ships no MLM head
    micro = trainer.micro_batches(next(trainer.batches()))[0]
    model.eval()
    with torch.no_grad():
        code = model(**micro).code
        original = trainer.original(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"]).code
    mask = micro["attention_mask"]
    assert anchor_loss(trainer.pooled(code, mask), trainer.pooled(original, mask)) < 1e-6
    assert trainer.distance_from_start() == 0
    model.train()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(2):
        assert trainer.training_step(next(batches))["head_only"]
        trainer.state.step += 1
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, start[name])}
    assert changed == trainer.fresh  # the pretrained weights did not move, not even by weight decay
    outcome = trainer.training_step(next(batches))
    assert not outcome["head_only"] and outcome["l2"] == 0 and outcome["anchor"] > 0  # dropout's own noise
    assert not torch.equal(model.maskae.backbone.encoder.layer[0].output.dense.weight,
                           start["maskae.backbone.encoder.layer.0.output.dense.weight"])


def test_tsdae_decoder_starts_as_the_top_layer(minilm_path):
    model = MaskAEForMaskedLM.from_backbone(minilm_path, 6, decoder="transformer", decoder_layers=1,
                                            bottleneck="sentence", decoder_init="top_layers")
    top = AutoModel.from_pretrained(minilm_path).encoder.layer[5].state_dict()
    assert max_abs_diff({k: v for k, v in model.decoder[0].state_dict().items()}, top) == 0
    assert all(name.startswith("head.") for name in model.fresh_keys)


@pytest.mark.parametrize("objective", ["mlm", "tsdae"])
def test_each_objective_adapts_a_tiny_model_and_keeps_its_best_step(tiny_bert_dir, corpus, tmp_path, objective):
    run = tmp_path / "run"
    results = maskae.adapt(tiny_bert_dir, corpus, run, objective, 3, steps=6, overrides=[
        "training.batch_size=16", "training.eval_steps=2", "training.eval_batch_size=8", "training.lr=3e-3",
        "adapt.head_warmup_steps=0", "data.validation_fraction=0.2", "adapt.min_original_cosine=0.5"])
    evaluations = read_log(run / "eval_log.jsonl")
    assert [r["step"] for r in evaluations] == [0, 2, 4, 6]
    assert evaluations[0]["eval_original_cosine"] == pytest.approx(1, abs=1e-6)
    allowed = [r for r in evaluations if r["eval_original_cosine"] >= 0.5]
    best = min(allowed, key=lambda r: r["eval_masked_loss"])
    assert results["best_step"] == best["step"] and results["masked_loss"] == pytest.approx(best["eval_masked_loss"])
    assert evaluations[-1]["eval_masked_loss"] < evaluations[0]["eval_masked_loss"]  # it learns
    assert {"isotropy", "mean_cosine", "original_cosine"} <= set(json.loads((run / "eval_results.json").read_text()))
    vectors = maskae.embed(run, SENTENCES[:3])
    assert vectors.shape == (3, 32)
    assert main(["export", str(run), "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "Cosine to the original model's sentence embedding" in card and "Isotropy" in card  # measured, carried


def test_tsdae_on_minilm(minilm_path, corpus, tmp_path):
    results = maskae.adapt(minilm_path, corpus, tmp_path / "run", "tsdae", steps=2, overrides=[
        "training.batch_size=16", "training.eval_batch_size=16", "adapt.max_eval_texts=16",
        "adapt.head_warmup_steps=1", "data.validation_fraction=0.2"])
    assert results["adapted_layer"] == 6 and 0.9 < results["original_cosine"] <= 1 + 1e-6


def test_resume_is_exact(tiny_bert_dir, corpus, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    overrides = ("adapt.l2_weight=0.1", "adapt.head_warmup_steps=2", "adapt.freeze_layers=1",
                 "training.lr_scheduler=constant_with_warmup")  # a shorter run decays its rate the same way
    train(adapt_recipe(tiny_bert_dir, corpus, reference, "mlm", 2, *overrides), reference)
    train(adapt_recipe(tiny_bert_dir, corpus, resumed, "mlm", 2, *overrides, "training.max_steps=3"), resumed)
    train(adapt_recipe(tiny_bert_dir, corpus, resumed, "mlm", 2, *overrides), resumed, resume=True)
    assert max_abs_diff(weights(reference), weights(resumed)) == 0
    for name in ("log.jsonl", "eval_log.jsonl"):
        logs = [[{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s", "data_wait_s")}
                 for r in read_log(run / name) if "eval_train_wall_time_s" not in r] for run in (reference, resumed)]
        assert logs[0] == logs[1]
    best = [json.loads((run / "best" / "best.json").read_text()) for run in (reference, resumed)]
    assert best[0] == best[1]
    frozen = "maskae.backbone.encoder.layer.0.output.dense.weight"
    assert torch.equal(weights(reference)[frozen], weights(tiny_bert_dir)["bert.encoder.layer.0.output.dense.weight"])


@pytest.mark.parametrize("case", ["no mask token", "decoder deeper than the model", "layer too deep",
                                  "replaced-token detection", "distill without a layer", "unknown objective"])
def test_bad_input_gets_one_line(tiny_bert_dir, corpus, tmp_path, capsys, case):
    model, extra = tiny_bert_dir, ["--objective", "mlm"]
    if case == "no mask token":
        config = json.loads((tiny_bert_dir / "tokenizer_config.json").read_text())
        config["mask_token"] = None
        (tiny_bert_dir / "tokenizer_config.json").write_text(json.dumps(config))
    elif case == "decoder deeper than the model":
        extra = ["--objective", "tsdae", "--set", "model.decoder_layers=5"]
    elif case == "layer too deep":
        extra = ["--objective", "mlm", "--layer", "5"]
    elif case == "replaced-token detection":
        extra = ["--objective", "mlm", "--set", "model.objective=rtd"]
    elif case == "distill without a layer":
        extra = []  # distill is the default objective
    argv = ["adapt", str(model), "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--steps", "2", *extra]
    if case == "unknown objective":
        with pytest.raises(SystemExit):
            main([*argv, "--objective", "bert"])
        err = capsys.readouterr().err.strip().splitlines()
        assert "invalid choice: 'bert'" in err[-1]
        return
    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("maskae adapt: error: "), err
    expected = {"no mask token": "no mask token", "decoder deeper than the model": "has 4",
                "layer too deep": "out of range", "replaced-token detection": "model.objective=mlm",
                "distill without a layer": "--layer K"}[case]
    assert expected in err[0]
