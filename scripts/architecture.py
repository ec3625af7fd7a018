"""Write docs/architecture.md: the package tree with each module's one-line purpose, read from the
modules' own docstrings, and the import layering between the package's parts, read from their imports.
`tests/test_architecture.py` checks that the page matches the code, so it cannot go stale.

    python scripts/architecture.py            # rewrite docs/architecture.md
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "maskae"
PAGE = REPO / "docs" / "architecture.md"

INTRO = """# Architecture

maskae is one package with a folder per concern. The model as the Hub ships it stays flat at the root,
because `trust_remote_code` only follows single-dot imports, and it imports nothing from the rest.
Above it, each part may import only the parts below it: commands → evaluation → training, export and search →
embeddings and data → metrics → the model → errors, with `utils` beside all. `tests/test_architecture.py`
walks the imports and fails on a cycle, between parts or inside one, and on this page differing from
the code (`python scripts/architecture.py` rewrites it).
"""


def first_sentence(docstring: str | None) -> str:
    """A module's purpose: its docstring's first sentence, on one line."""
    if not docstring:
        return ""
    text = " ".join(docstring.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def modules() -> list[Path]:
    """Every Python module of the package, the shipped evaluate scripts left out (they are data)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "metrics" and len(relative.parts) > 2:
            continue
        found.append(path)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node, except what sits under `if TYPE_CHECKING:` (imports for type checkers only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(path: Path) -> set[str]:
    """The maskae modules that `path` imports at run time, anywhere in it (function-level imports too)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "maskae":
                continue
            for alias in node.names:  # `from . import x` imports module x when there is one
                candidate = f"{target}.{alias.name}"
                path_of = REPO / candidate.replace(".", "/")
                found.add(candidate if path_of.with_suffix(".py").is_file() or (path_of / "__init__.py").is_file()
                          else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "maskae")
    return found - {name}


def part_of(module: str) -> str:
    """The part a module belongs to: its subpackage; "model" for the flat Hub closure at the root (errors
    included), "cli" for the entry points and "api" for the package's lazy public names."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return "api" if parts[1] == "auto_registration" else "model"


def render() -> str:
    lines = [INTRO, "## The tree", "", "```"]
    for path in modules():
        relative = path.relative_to(REPO).as_posix()
        purpose = first_sentence(ast.get_docstring(ast.parse(path.read_text())))
        lines.append(f"{relative:<44} {purpose}")
    lines.append("```")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(REPO)}", file=sys.stderr)
