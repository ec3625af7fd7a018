"""Optional dependencies, imported where they are used: a missing one is one line naming the extra that
installs it, never an ImportError traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingExtraError


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """`importlib.import_module(module)`, or a MissingExtraError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed; pip install 'maskae[{extra}]'."
        ) from None
