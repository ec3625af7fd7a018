"""Recipes: YAML -> dataclasses, --set overrides, errors that name the key, documented keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from maskae.cli import build_parser
from maskae.errors import ConfigError
from maskae.training.recipe import (
    Recipe,
    all_keys,
    apply_override,
    load_recipe,
    recipe_from_dict,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


def test_defaults_and_coercion():
    recipe = recipe_from_dict({
        "tokenizer": {"train": {"vocab_size": "500"}},
        "training": {"lr": "3e-4", "max_grad_norm": "null", "report_to": "tensorboard", "compile": "yes"},
    })
    assert isinstance(recipe, Recipe)
    assert recipe.training.lr == 3e-4 and isinstance(recipe.training.lr, float)  # YAML 1.1 reads 3e-4 as a string
    assert recipe.training.max_grad_norm is None
    assert recipe.training.report_to == ["tensorboard"]
    assert recipe.training.compile is True
    assert recipe.tokenizer.train.vocab_size == 500 and recipe.tokenizer.train.kind == "wordpiece"
    assert recipe.noise.mask_prob == 0.15 and recipe.model.decoder == "layers"


def test_set_overrides_nested_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"tokenizer": {"train": None}, "training": {"lr": 1e-3}}))
    recipe = load_recipe(path, ["training.lr=2e-4", "tokenizer.train.vocab_size=300", "model.split_layer=3",
                                "noise.whole_word=true"])
    assert recipe.training.lr == 2e-4
    assert recipe.tokenizer.train.vocab_size == 300
    assert recipe.model.split_layer == 3
    assert recipe.noise.whole_word is True


@pytest.mark.parametrize(
    "values, message",
    [
        ({"training": {"lrr": 1}}, "training.lrr; did you mean training.lr?"),
        ({"trainig": {}}, "trainig; did you mean training?"),
        ({"model": {"split_layr": 2}}, "did you mean model.split_layer?"),
        ({"noise": {"mask_prb": 0.2}}, "did you mean noise.mask_prob?"),
        ({"model": {"decoder": "rnn"}}, "model.decoder is 'rnn'; use one of layers, linear, transformer"),
        ({"training": {"max_steps": "many"}}, "training.max_steps must be an integer"),
        ({"training": {"max_steps": 0}}, "training.max_steps is 0"),
        ({"training": {"warmup_steps": -5}}, "training.warmup_steps is -5"),
        ({"noise": {"mask_prob": 1.5}}, "noise.mask_prob=1.5"),
        ({"training": {"mixed_precision": "fp8"}}, "training.mixed_precision is 'fp8'"),
        ({"tokenizer": {"train": None}}, "a from-scratch model needs a tokenizer"),
        ({"data": {"block_size": 1024}, "tokenizer": {"path": "x"}}, "exceeds model.max_position_embeddings"),
        ({"model": 3}, "model must be a mapping"),
    ],
)
def test_bad_recipes_name_the_key(values, message):
    values = {"tokenizer": {"train": {"vocab_size": 100}}, **values}
    with pytest.raises(ConfigError) as error:
        recipe_from_dict(values)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, "training.lr")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(broken)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(RECIPES / "tiny-wikitext2.yaml", ["training.max_steps=7"])
    recipe.save(tmp_path / "recipe.yaml")
    again = load_recipe(tmp_path / "recipe.yaml")
    assert again == recipe and again.training.max_steps == 7


def test_every_key_is_documented_in_help():
    keys = all_keys()
    assert len(keys) > 50
    assert all(help_text for _, _, help_text in keys), [key for key, _, h in keys if not h]
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    for key, _, help_text in keys:
        assert f"  {key} (default " in text
    assert "torch.load" in text  # the --resume security note


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.name)
def test_recipe_files_load_and_comment_every_key(path):
    # an adapt recipe gets its model and text from `maskae adapt`'s arguments
    section = "adapt" if path.name in ("adapt-mlm.yaml", "adapt-tsdae.yaml") else "distill"
    given = ["model.backbone=m", "model.split_layer=1", f"{section}.corpus=[c.txt]"] if path.name.startswith("adapt-") else []
    load_recipe(path, given)  # valid, no unknown keys
    for line in path.read_text().splitlines():
        if re.match(r"^\s+[a-z_0-9]+:", line):  # every key below the five section headers
            assert "#" in line, f"{path.name}: key without a comment: {line.strip()}"


def listed_keys(path) -> set[str]:
    listed = set()
    stack = []
    for line in path.read_text().splitlines():
        match = re.match(r"^(\s*)([a-z_0-9]+):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack = stack[:depth] + [match.group(2)]
            listed.add(".".join(stack))
    return listed


def test_default_recipes_list_every_key():
    """The tiny recipe lists every key of a training recipe; the adapt recipes every key of their section."""
    keys = [key for key, _, _ in all_keys()]
    assert not [key for key in keys if not key.startswith(("distill.", "adapt."))
                and key not in listed_keys(RECIPES / "tiny-wikitext2.yaml")]
    for name, section in (("adapt-distill.yaml", "distill"), ("adapt-static.yaml", "distill"), ("adapt-mlm.yaml", "adapt"),
                          ("adapt-tsdae.yaml", "adapt")):
        missing = [key for key in keys if key.startswith(f"{section}.") and key != f"{section}.corpus"
                   and key not in listed_keys(RECIPES / name)]
        assert not missing, (name, missing)
