"""Distillation (`maskae adapt --objective distill`): identities at K = depth and K = 0, the loss falls,
the teacher cache, exact resume, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from conftest import RECIPES, TINY, max_abs_diff, tiny_tokenizer, train_until_killed, weights
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

import maskae
from maskae.cli import main
from maskae.modeling_maskae import pool
from maskae.training.distillation import DistillationTrainer, distillation_loss
from maskae.training.recipe import load_recipe
from maskae.training.run import train
from maskae.training.teacher import teacher_embeddings, token_embeddings

SENTENCES = [f"w{i % 90} w{(i * 7) % 90} w{(i * 3) % 50}" + f" w{i % 11}" * (i % 5) for i in range(80)]


@pytest.fixture
def other_teacher(tmp_path):
    """Another random tiny BERT: its embedding is far from the student's layers, so learning it shows."""
    torch.manual_seed(1)
    path = tmp_path / "teacher"
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(path)
    tiny_tokenizer(path)
    return path


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def distill_recipe(teacher, corpus, output_dir, layer, *overrides, name="adapt-distill.yaml"):
    return load_recipe(RECIPES / name, [
        f"model.backbone={teacher}", f"model.split_layer={layer}", f"distill.corpus=[{corpus}]",
        f"training.output_dir={output_dir}", "training.batch_size=16", "training.max_steps=6",
        "training.eval_steps=2", "training.save_steps=3", "training.logging_steps=1", "training.eval_batch_size=8",
        "training.warmup_steps=0", "data.validation_fraction=0.2", *overrides,
    ])


def test_the_tiny_tokenizer_knows_its_words(tiny_bert_dir):
    tokenizer = maskae.Embedder.from_pretrained(tiny_bert_dir).tokenizer
    assert len(tokenizer) == 99 and tokenizer("w1 w93")["input_ids"] == [2, 6, 98, 3]


def test_loss_terms():
    torch.manual_seed(0)
    teacher = torch.randn(8, 16)
    assert distillation_loss(teacher.clone(), teacher, "cosine+mse", 1.0, [4, 8]) == pytest.approx(0, abs=1e-6)
    student = teacher * 3  # same direction, other length
    assert distillation_loss(student, teacher, "cosine") == pytest.approx(0, abs=1e-6)
    assert distillation_loss(student, teacher, "mse") == pytest.approx(float(((2 * teacher) ** 2).mean()), rel=1e-5)
    other = torch.randn(8, 16)
    cosine = float((1 - torch.nn.functional.cosine_similarity(other, teacher)).mean())
    assert distillation_loss(other, teacher, "cosine") == pytest.approx(cosine, rel=1e-5)
    prefix = float((1 - torch.nn.functional.cosine_similarity(other[:, :4], teacher[:, :4])).mean())
    assert distillation_loss(other, teacher, "cosine", matryoshka_dims=[4]) == pytest.approx((cosine + prefix) / 2, rel=1e-5)
    assert distillation_loss(other, teacher, "cosine", similarity_weight=1.0) > cosine


def test_full_depth_starts_at_zero_loss_and_keeps_the_teacher(tiny_bert_dir, corpus, tmp_path):
    run = tmp_path / "run"
    results = train(distill_recipe(tiny_bert_dir, corpus, run, 4, "training.max_steps=2"), run)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(0, abs=1e-6)
    # Adam turns rounding-level gradients into full-size steps, so the kept model is the step-0 one.
    assert results["best_step"] == 0 and results["best_teacher_cosine"] == pytest.approx(1, abs=1e-6)
    texts = SENTENCES[:10]
    student = maskae.embed(run, texts)
    teacher = maskae.embed(tiny_bert_dir, texts)
    np.testing.assert_allclose(student, teacher, atol=1e-5)


def test_early_layer_moves_towards_the_teacher(tiny_bert_dir, other_teacher, corpus, tmp_path):
    run = tmp_path / "run"
    recipe = distill_recipe(tiny_bert_dir, corpus, run, 1, "training.max_steps=30", "training.eval_steps=10",
                            "training.save_steps=100", "training.lr=1e-3", f"distill.teacher={other_teacher}")
    results = train(recipe, run)
    evaluations = [json.loads(line) for line in (run / "eval_log.jsonl").read_text().splitlines()]
    assert evaluations[0]["step"] == 0  # the starting point is scored first
    assert results["loss"] < 0.5 * evaluations[0]["eval_loss"]
    assert results["best_teacher_cosine"] > evaluations[0]["eval_teacher_cosine"] + 0.1
    assert results["distilled_layer"] == 1
    cosine = torch.nn.functional.cosine_similarity(  # the saved run, embedded as users will
        torch.from_numpy(maskae.embed(run, SENTENCES)), torch.from_numpy(maskae.embed(other_teacher, SENTENCES))).mean()
    assert float(cosine) > evaluations[0]["eval_teacher_cosine"] + 0.1
    # the frozen decoder is the teacher's own upper layers, untouched
    saved, stock = weights(run), weights(tiny_bert_dir)
    assert max_abs_diff({k: v for k, v in saved.items() if k.startswith("decoder.1.")},
                        {k.replace("bert.encoder.layer.2.", "decoder.1."): v for k, v in stock.items()
                         if k.startswith("bert.encoder.layer.2.")}) == 0


def test_static_student_is_a_pooled_table(tiny_bert_dir, other_teacher, corpus, tmp_path):
    run = tmp_path / "run"
    # the Python API of `maskae adapt`: the packaged adapt-static.yaml, with the test's sizes on top
    results = maskae.adapt(tiny_bert_dir, corpus, run, "distill", 0, steps=8, overrides=[
        "training.batch_size=16", "training.eval_steps=2", "training.eval_batch_size=8", f"distill.teacher={other_teacher}"])
    assert results["distilled_layer"] == 0 and results["speedup_vs_teacher"] > 0
    assert results["best_step"] > 0
    model = maskae.MaskAEModel.from_pretrained(run)
    assert model.config.split_layer == 0 and len(model.layers()) == 0
    before, after = weights(tiny_bert_dir), weights(run)
    table = "maskae.backbone.embeddings.word_embeddings.weight"
    assert not torch.equal(before["bert.embeddings.word_embeddings.weight"], after[table])
    texts = SENTENCES[:12]
    tokenizer = maskae.Embedder.from_pretrained(run).tokenizer
    expected = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            rows = model.backbone.embeddings(input_ids=ids)
        expected.append(pool(rows, torch.ones_like(ids), "mean")[0].numpy())
    np.testing.assert_allclose(maskae.embed(run, texts), np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(maskae.embed(run, texts, layer=0), np.stack(expected), atol=1e-5)


def test_static_table_can_start_from_the_teachers_token_vectors(tiny_bert_dir, other_teacher, corpus, tmp_path):
    cache = tmp_path / "cache"
    vectors = token_embeddings(str(other_teacher), cache)
    # each row is the teacher's embedding of that token alone: "w1" is [CLS] w1 [SEP], id 6
    np.testing.assert_allclose(vectors[[6, 98]].numpy(), maskae.embed(other_teacher, ["w1", "w93"]), atol=1e-5)
    recipe = distill_recipe(tiny_bert_dir, corpus, tmp_path / "run", 0, f"distill.teacher={other_teacher}",
                            "distill.static_init=teacher_tokens", f"distill.teacher_cache={cache}", name="adapt-static.yaml")
    trainer = DistillationTrainer(recipe, tmp_path / "run")
    trainer.prepare()
    table = trainer.full_model.get_input_embeddings().weight.detach()
    standardised = (vectors - vectors.mean(-1, keepdim=True)) / vectors.std(-1, keepdim=True)
    torch.testing.assert_close(table, standardised)
    norm = trainer.full_model.maskae.backbone.embeddings.LayerNorm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()


def test_a_distilled_run_exports_like_any_run(tiny_bert_dir, other_teacher, corpus, tmp_path):
    run = tmp_path / "run"
    train(distill_recipe(tiny_bert_dir, corpus, run, 0, "training.max_steps=4", f"distill.teacher={other_teacher}",
                         name="adapt-static.yaml"), run)
    assert main(["export", str(run), "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "Cosine to the teacher" in card and "Embedding speed" in card and "corpus.txt" in card
    assert main(["export", str(run), "--out", str(tmp_path / "st"), "--sentence-transformers"]) == 0
    from sentence_transformers import SentenceTransformer

    vectors = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(SENTENCES[:5])
    np.testing.assert_allclose(vectors, maskae.embed(run, SENTENCES[:5]), atol=1e-5)


def test_resume_is_exact_and_the_best_model_is_kept(tiny_bert_dir, corpus, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    overrides = ("training.lr=3e-3", "distill.similarity_weight=0.5", f"distill.teacher_cache={tmp_path / 'cache'}")
    train(distill_recipe(tiny_bert_dir, corpus, reference, 2, *overrides), reference)
    train(distill_recipe(tiny_bert_dir, corpus, resumed, 2, *overrides, "training.max_steps=3"), resumed)
    train(distill_recipe(tiny_bert_dir, corpus, resumed, 2, *overrides), resumed, resume=True)
    assert max_abs_diff(weights(reference), weights(resumed)) == 0
    logs = [[json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
            for run in (reference, resumed)]
    assert logs[0] == logs[1] and len(logs[0]) == 6
    results = json.loads((reference / "eval_results.json").read_text())
    evaluations = [json.loads(line) for line in (reference / "eval_log.jsonl").read_text().splitlines()]
    best = max(evaluations, key=lambda r: r["eval_teacher_cosine"])
    assert results["best_step"] == best["step"]
    assert results["best_teacher_cosine"] == pytest.approx(best["eval_teacher_cosine"])
    encoder = load_file(reference / "best" / "model.safetensors")
    assert max_abs_diff({f"maskae.{k}": v for k, v in encoder.items()},
                        {k: v for k, v in weights(reference).items() if k.startswith("maskae.")}) == 0


def test_resume_after_sigkill_matches_the_uninterrupted_run(tiny_bert_dir, corpus, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    overrides = ("training.max_steps=40", "training.lr=3e-3", f"distill.teacher_cache={tmp_path / 'cache'}")
    train(distill_recipe(tiny_bert_dir, corpus, reference, 2, *overrides), reference)
    train_until_killed(distill_recipe(tiny_bert_dir, corpus, killed, 2, *overrides), killed, count=1)
    train(distill_recipe(tiny_bert_dir, corpus, killed, 2, *overrides), killed, resume=True)
    assert max_abs_diff(weights(reference), weights(killed)) == 0
    for name in ("log.jsonl", "eval_log.jsonl"):
        steps = [[json.loads(line)["step"] for line in (run / name).read_text().splitlines()] for run in (reference, killed)]
        assert steps[0] == steps[1]
    best = [json.loads((run / "best" / "best.json").read_text()) for run in (reference, killed)]
    assert best[0] == best[1]


def test_a_minutes_budget_stops_the_run(tiny_bert_dir, corpus, tmp_path):
    results = maskae.adapt(tiny_bert_dir, corpus, tmp_path / "run", "distill", 1, minutes=1e-6, overrides=[
        "training.batch_size=16", "training.eval_batch_size=8"])
    assert results["step"] == 0 and results["best_step"] == 0  # spent before the first step: the start is kept


def test_teacher_cache_is_reused_and_keyed_by_text(tiny_bert_dir, tmp_path):
    cache = tmp_path / "cache"
    first = teacher_embeddings(str(tiny_bert_dir), SENTENCES[:5], cache, show_progress=False)
    np.testing.assert_allclose(first.numpy(), maskae.embed(tiny_bert_dir, SENTENCES[:5]), atol=1e-6)
    (path,) = cache.glob("*.safetensors")
    stamp = path.stat().st_mtime_ns
    again = teacher_embeddings(str(tiny_bert_dir), SENTENCES[:5], cache, show_progress=False)
    assert torch.equal(first, again) and path.stat().st_mtime_ns == stamp
    teacher_embeddings(str(tiny_bert_dir), SENTENCES[1:6], cache, show_progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 2


@pytest.mark.parametrize("case", ["empty corpus", "layer too deep", "negative layer", "no tokenizer", "few sentences"])
def test_bad_input_gets_one_line(tiny_bert_dir, corpus, tmp_path, capsys, case):
    teacher, text = tiny_bert_dir, corpus
    layer = "1"
    if case == "empty corpus":
        text = tmp_path / "blank.txt"
        text.write_text("\n  \n")
    elif case == "layer too deep":
        layer = "5"
    elif case == "negative layer":
        layer = "-1"
    elif case == "no tokenizer":
        teacher = tmp_path / "bare"
        teacher.mkdir()
        for name in ("config.json", "model.safetensors"):
            (teacher / name).write_bytes((tiny_bert_dir / name).read_bytes())
    elif case == "few sentences":
        text = tmp_path / "few.txt"
        text.write_text("w1 w2\nw3 w4\n")
    status = main(["adapt", str(teacher), "--corpus", str(text), "--out", str(tmp_path / "run"), "--objective", "distill", "--layer", layer,
                   "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("maskae adapt: error: "), err
    expected = {"empty corpus": "no text", "layer too deep": "out of range", "negative layer": "negative",
                "no tokenizer": "tokenizer", "few sentences": "fewer than one batch"}[case]
    assert expected in err[0]
