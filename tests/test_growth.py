"""Growing the encoder during training: exact stacking, frozen layers that stay frozen, the optimizer
and scheduler after each stage, exact resume across a growth boundary, and a saved model that knows
nothing of growth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, read_log, weights
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    DistilBertConfig,
    ModernBertConfig,
    get_scheduler,
)

from maskae import MaskAEConfig, MaskAEForMaskedLM
from maskae.errors import ConfigError
from maskae.training import run as pretraining
from maskae.training import trainer as training
from maskae.training.growth import (
    GrowthTrainer,
    check_growth,
    encoder_layers,
    enter_stage,
    set_encoder_depth,
    stage_starts,
)
from maskae.training.recipe import load_recipe

SHRINK = [
    "model.hidden_size=16", "model.num_layers=4", "model.split_layer=2", "model.num_heads=2",
    "model.intermediate_size=32", "model.max_position_embeddings=32",
    "data.block_size=32", "data.max_train_blocks=96", "data.max_eval_blocks=8",
    "training.batch_size=8", "training.warmup_steps=2", "training.lr=3e-3", "training.logging_steps=1",
    "training.eval_steps=null", "training.pseudo_perplexity_blocks=0", "training.eval_batch_size=8",
    "training.save_total_limit=null",
]
STACK = ["growth.method=stack", "growth.stages=[{layers: 1, share: 0.4}, {layers: 2, share: 0.6}]"]
GREEDY = ["growth.method=greedy",
          "growth.stages=[{layers: 1, share: 0.25}, {layers: 2, share: 0.25}, {layers: 2, share: 0.5}]"]


def tiny_recipe(tokenizer: Path, *overrides: str, name: str = "tiny-wikitext2.yaml"):
    return load_recipe(RECIPES / name, [*SHRINK, f"tokenizer.path={tokenizer}", "tokenizer.train=null", *overrides])


def tiny_model(family: str = "bert", split_layer: int = 4) -> MaskAEForMaskedLM:
    torch.manual_seed(0)
    if family == "distilbert":
        base = DistilBertConfig(vocab_size=99, dim=16, n_layers=6, n_heads=2, hidden_dim=32)
    elif family == "modernbert":
        base = ModernBertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                                intermediate_size=32, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                cls_token_id=2, sep_token_id=3)
    else:
        base = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                          intermediate_size=32)
    return MaskAEForMaskedLM(MaskAEConfig(base_config=base, split_layer=split_layer))


def layer_state(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def optimizer_and_scheduler(model, recipe):
    optimizer = training.build_optimizer(model, torch.device("cpu"), **recipe.training.optimizer_settings())
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=20)
    return optimizer, scheduler


def train_a_step(model, optimizer, scheduler) -> None:
    ids = torch.randint(5, 99, (2, 8), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


# ---------------------------------------------------------------- model surgery, no trainer


def test_stack_copies_layers_exactly_and_keeps_optimizer_and_scheduler_in_step(tmp_path, small_tokenizer):
    recipe = tiny_recipe(small_tokenizer, "growth.stages=[{layers: 1, share: 0.2}, {layers: 2, share: 0.3}, "
                         "{layers: 4, share: 0.5}]", "growth.copy_optimizer_state=true")
    model = tiny_model()
    set_encoder_depth(model, 1)
    optimizer, scheduler = optimizer_and_scheduler(model, recipe)
    per_layer = sum(p.numel() for p in encoder_layers(model)[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    train_a_step(model, optimizer, scheduler)
    train_a_step(model, optimizer, scheduler)

    for stage, depth in [(1, 2), (2, 4)]:
        before = [layer_state(layer) for layer in encoder_layers(model)]
        event = enter_stage(model, optimizer, scheduler, recipe, stage)
        layers = encoder_layers(model)
        assert len(layers) == model.config.split_layer == depth
        for index in range(depth):  # old layers untouched, new layer i is a copy of layer i - old depth
            source = before[index % len(before)]
            assert all(torch.equal(source[k], v) for k, v in layer_state(layers[index]).items())
        assert layers[-1].attention.self.query.weight is not layers[0].attention.self.query.weight
        # copied AdamW moments and step counts
        for new, old in zip(layers[len(before)].parameters(), layers[0].parameters()):
            assert set(optimizer.state[new]) == {"step", "exp_avg", "exp_avg_sq"}
            assert all(torch.equal(optimizer.state[new][k], optimizer.state[old][k]) for k in optimizer.state[old])
        # parameter count, groups (decay / no decay per growth), scheduler lists and the current LR
        assert event["params"] == sum(p.numel() for p in model.parameters()) == total + (depth - 1) * per_layer
        assert len(optimizer.param_groups) == event["optimizer_groups"] == 2 * stage + 2
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
        assert [g["weight_decay"] for g in optimizer.param_groups[-2:]] == [recipe.training.weight_decay, 0.0]
        assert all(p.ndim >= 2 for p in optimizer.param_groups[-2]["params"])
        assert all(p.ndim < 2 for p in optimizer.param_groups[-1]["params"])
        assert len(scheduler.base_lrs) == len(scheduler.lr_lambdas) == len(optimizer.param_groups)
        assert len({g["lr"] for g in optimizer.param_groups}) == 1
        train_a_step(model, optimizer, scheduler)
        assert len({g["lr"] for g in optimizer.param_groups}) == 1
        assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups]

    # the grown model saves and loads as an ordinary maskae model of 4 encoder layers
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert loaded.config.split_layer == 4 and loaded.config.base_config.num_hidden_layers == 6
    assert len(encoder_layers(loaded)) == 4 and len(loaded.decoder) == 2
    ids = torch.randint(5, 99, (2, 8), generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_stack_without_copying_state_starts_new_layers_fresh(small_tokenizer):
    recipe = tiny_recipe(small_tokenizer, "growth.stages=[{layers: 2, share: 0.5}, {layers: 4, share: 0.5}]")
    model = tiny_model()
    set_encoder_depth(model, 2)
    optimizer, scheduler = optimizer_and_scheduler(model, recipe)
    train_a_step(model, optimizer, scheduler)
    enter_stage(model, optimizer, scheduler, recipe, 1)
    new = [p for layer in encoder_layers(model)[2:] for p in layer.parameters()]
    assert new and not any(p in optimizer.state for p in new)
    train_a_step(model, optimizer, scheduler)
    assert all(int(optimizer.state[p]["step"]) == 1 for p in new)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_append_zero_residual_layers_start_with_silent_branches(family, small_tokenizer):
    recipe = tiny_recipe(small_tokenizer, "growth.method=append", "growth.init=zero_residual",
                         "growth.stages=[{layers: 1, share: 0.5}, {layers: 3, share: 0.5}]")
    model = tiny_model(family, split_layer=3)
    model.gradient_checkpointing_enable()
    set_encoder_depth(model, 1)
    optimizer, scheduler = optimizer_and_scheduler(model, recipe)
    enter_stage(model, optimizer, scheduler, recipe, 1)
    assert all(layer.gradient_checkpointing for layer in encoder_layers(model))
    names = {"bert": ("attention.output.dense", "output.dense"), "distilbert": ("attention.out_lin", "ffn.lin2")}
    for layer in encoder_layers(model)[1:]:
        for name in names[family]:
            assert not layer.get_submodule(name).weight.any() and not layer.get_submodule(name).bias.any()
        assert layer.get_submodule(names[family][0].rsplit(".", 1)[0]).training is True
    assert model.maskae.backbone.config.num_hidden_layers == 3
    assert len(optimizer.param_groups) == 4


def test_schedule_checks(small_tokenizer):
    assert stage_starts(tiny_recipe(small_tokenizer, *STACK).growth, 10) == [0, 4]
    with pytest.raises(ConfigError, match="split_layer=4; make the last stage's layers 4"):
        check_growth(tiny_recipe(small_tokenizer, *STACK).growth, tiny_model(), 10)
    with pytest.raises(ConfigError, match="stage 2 gets no step of training.max_steps=2"):
        check_growth(tiny_recipe(small_tokenizer, "growth.stages=[{layers: 1, share: 0.8}, {layers: 2, share: 0.2}]")
                     .growth, tiny_model(split_layer=2), 2)
    with pytest.raises(ConfigError, match="cannot grow a modernbert encoder"):
        check_growth(tiny_recipe(small_tokenizer, *STACK).growth, tiny_model("modernbert", split_layer=2), 10)
    bad = {
        "growth.stages=[{layers: 1, share: 0.5}, {layers: 3, share: 0.5}]": "at most double",
        "growth.stages=[{layers: 2, share: 0.5}, {layers: 2, share: 0.5}]": "must grow in layers",
        "growth.stages=[{layers: 1, share: 0.5}, {layers: 2, share: 0.6}]": "sum to 1.1",
        "growth.stages=[{layers: 0, share: 0.5}, {layers: 2, share: 0.5}]": "layers >= 1",
        "growth.stages=[{layers: 1, share: 0.5}, {layrs: 2, share: 0.5}]": "unknown recipe key growth.stages.layrs",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            tiny_recipe(small_tokenizer, override)
    # greedy's last stage may repeat the depth before it (it unfreezes everything)
    assert tiny_recipe(small_tokenizer, *GREEDY).growth.stages[-1].layers == 2


# ---------------------------------------------------------------- in the training loop


class FrozenWatch(GrowthTrainer):
    """Records the encoder's layers at every step end (after growth)."""

    def on_step_end(self) -> None:
        super().on_step_end()
        layers = encoder_layers(self.accelerator.unwrap_model(self.model))
        self.snapshots[self.state.step] = [layer_state(layer) for layer in layers]
        self.trainable[self.state.step] = [all(p.requires_grad for p in layer.parameters()) for layer in layers]


def test_greedy_freezes_older_layers_bit_for_bit_until_the_last_stage(tmp_path, small_tokenizer):
    recipe = tiny_recipe(small_tokenizer, *GREEDY, "training.max_steps=12", "training.save_steps=100")
    trainer = FrozenWatch(recipe, tmp_path)
    trainer.snapshots, trainer.trainable = {}, {}
    trainer.train()
    snaps = trainer.snapshots
    assert trainer.stage_starts == [0, 3, 6]
    assert trainer.trainable[2] == [True] and trainer.trainable[3] == [False, True]
    assert trainer.trainable[6] == [True, True]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(snaps[1][0], snaps[2][0])  # stage 1: layer 0 trains
    assert all(same(snaps[3][0], snaps[step][0]) for step in (4, 5, 6))  # stage 2: frozen, bit for bit
    assert not same(snaps[3][1], snaps[6][1])  # ... while the new layer trains
    assert not same(snaps[6][0], snaps[12][0])  # stage 3: unfrozen, it trains again

    events = [r for r in read_log(tmp_path / "log.jsonl") if r.get("event") == "growth"]
    assert [(r["step"], r["from_layers"], r["to_layers"]) for r in events] == [(3, 1, 2), (6, 2, 2)]
    assert events[0]["trainable_params"] < events[0]["params"] == events[1]["params"] == events[1]["trainable_params"]
    assert all(r["method"] == "greedy" and r["optimizer_groups"] == 4 for r in events)


@pytest.mark.parametrize("method, overrides, max_steps, resume_from", [
    ("stack", [*STACK, "growth.copy_optimizer_state=true"], 10, 4),  # checkpoint written right after growth
    ("greedy", [*GREEDY, "growth.init=random"], 12, 3),  # fresh layers from the RNG, then frozen layers
])
def test_resume_across_a_growth_boundary_is_exact(tmp_path, small_tokenizer, method, overrides, max_steps, resume_from):
    # dropout stays on: restored RNG states matter too
    recipe = tiny_recipe(small_tokenizer, *overrides, f"training.max_steps={max_steps}", f"training.save_steps={resume_from}")
    reference = tmp_path / "reference"
    pretraining.train(recipe, reference)

    # a run killed right after checkpoint-<resume_from>, i.e. right after the growth step
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(reference / f"checkpoint-{resume_from}", killed / f"checkpoint-{resume_from}")
    lines = (reference / "log.jsonl").read_text().splitlines()
    (killed / "log.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= resume_from + 1))
    pretraining.train(recipe, killed, resume=True)

    a, b = weights(reference), weights(killed)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    reference_log, resumed_log = read_log(reference / "log.jsonl"), read_log(killed / "log.jsonl")
    assert [r["step"] for r in resumed_log] == [r["step"] for r in reference_log]
    assert [r.get("loss") for r in resumed_log] == pytest.approx([r.get("loss") for r in reference_log], abs=1e-6)
    assert sum(r.get("event") == "growth" for r in resumed_log) == len(recipe.growth.stages) - 1

    # the saved model is an ordinary maskae model at the recipe's final shape
    config = json.loads((killed / "config.json").read_text())
    assert config["split_layer"] == 2 and config["base_config"]["num_hidden_layers"] == 4
    assert "growth" not in json.dumps(config)
    loaded = AutoModelForMaskedLM.from_pretrained(killed)
    assert all(torch.equal(loaded.state_dict()[k], b[k]) for k in b)
