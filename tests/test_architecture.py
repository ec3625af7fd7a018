"""The package's structure as docs/architecture.md states it: no import cycle between modules or
between parts, each part importing only the parts below it, and the page itself up to date."""

from __future__ import annotations

import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
architecture = runpy.run_path(str(REPO / "scripts" / "architecture.py"))

# part -> the parts it may import (the model closure at the root imports nothing of the rest)
ALLOWED = {
    "model": set(),
    "utils": {"model"},
    "metrics": {"model"},
    "data": {"model", "utils"},
    "embeddings": {"api", "model", "utils"},
    "export": {"api", "embeddings", "model", "utils"},
    "search": {"api", "data", "embeddings", "model", "utils"},
    "training": {"api", "data", "embeddings", "metrics", "model", "utils"},
    "evaluation": {"api", "data", "embeddings", "export", "metrics", "model", "training", "utils"},
    "commands": {"api", "data", "embeddings", "evaluation", "export", "metrics", "model", "search", "training",
                 "utils"},
    "cli": {"commands", "model", "utils"},
    "api": {"model"},
}


def graph() -> dict[str, set[str]]:
    return {architecture["module_name"](path): architecture["imports"](path) for path in architecture["modules"]()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_modules():
    assert find_cycle(graph()) is None


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    parts: dict[str, set[str]] = {}
    for module, targets in graph().items():
        part = architecture["part_of"](module)
        for target in targets:
            other = architecture["part_of"](target)
            if other != part:
                parts.setdefault(part, set()).add(other)
                if other not in ALLOWED[part]:
                    wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
    assert find_cycle(parts) is None


def test_the_model_closure_imports_only_single_dot_siblings():
    """trust_remote_code copies configuration_maskae.py and modeling_maskae.py and what they import with one
    dot; anything deeper would be missing on the Hub."""
    for name in ("configuration_maskae", "modeling_maskae", "backbones", "linear_cross_entropy", "errors"):
        source = (REPO / "maskae" / f"{name}.py").read_text()
        assert "from .." not in source and "import maskae" not in source and "from maskae" not in source, name


def test_architecture_page_matches_the_code():
    assert (REPO / "docs" / "architecture.md").read_text() == architecture["render"](), (
        "docs/architecture.md is stale; run python scripts/architecture.py")


def test_every_module_says_why_it_exists():
    missing = [str(path.relative_to(REPO)) for path in architecture["modules"]()
               if path.name != "__main__.py" and not architecture["first_sentence"](
                   __import__("ast").get_docstring(__import__("ast").parse(path.read_text())))]
    assert not missing, missing


def test_pyproject_ships_every_subpackage_and_the_card_templates():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"maskae"} | {f"maskae.{p.parent.name}" for p in (REPO / "maskae").glob("*/__init__.py")}
    assert set(config["packages"]) == on_disk | {"maskae.model_cards", "maskae.recipes"}
    assert config["package-dir"] == {"maskae.model_cards": "model_cards", "maskae.recipes": "recipes"}
    from maskae.export.guards import card_template

    for name in ("maskae.md.jinja", "sentence-transformers.md.jinja"):
        assert card_template(name).read_bytes() == (REPO / "model_cards" / name).read_bytes()


def test_help_imports_no_torch():
    """`maskae --help` builds every command's parser; none of them may pay for torch or transformers."""
    code = ("import sys; from maskae.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'sklearn') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
