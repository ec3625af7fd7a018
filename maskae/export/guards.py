"""What every export shares: its card template, and the checks: no pickle files leave maskae, plots are images, a remote-code model
directory holds the code its auto_map names, and a base model is named only by a real Hub id."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import ExportError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


def card_template(name: str) -> Path:
    """A model-card template from the repository's model_cards/, which the package ships as
    `maskae.model_cards` (one mapping in pyproject.toml)."""
    return Path(str(files("maskae.model_cards").joinpath(name)))


def pickle_files(folder: Path) -> list[str]:
    """Files under `folder` whose suffix says pickle, relative to it. An OpenVINO model's weights (a .bin beside
    the .xml of the same name) are raw tensors, not pickle."""
    return sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*")
        if path.suffix.lower() in PICKLE_SUFFIXES
        and not (path.suffix.lower() == ".bin" and path.with_suffix(".xml").is_file())
    )


def refuse_pickles(folder: Path, fix: str) -> None:
    """Raise if `folder` holds a pickle file; `fix` says what to do instead."""
    pickles = pickle_files(folder)
    if pickles:
        raise ExportError(f"{folder} holds pickle files ({', '.join(pickles)}), which maskae never ships; {fix}")


def check_self_contained(out: Path, auto_map: dict[str, str]) -> None:
    """The files that config.json's auto_map points to must be there (save_pretrained copies them, and what
    they import relatively, for classes registered with `register_for_auto_class`)."""
    wanted = [f"{entry.split('.')[0]}.py" for entry in auto_map.values()]
    missing = [name for name in wanted if not (out / name).is_file()]
    if missing:
        raise ExportError(
            f"save_pretrained wrote no {', '.join(missing)} into {out}; import maskae (which registers its classes "
            "for the Auto classes) before exporting."
        )


def check_plots(plots: Iterable[str | Path] | None) -> list[Path]:
    """The plot files, each checked to be an existing image."""
    files = [Path(plot) for plot in plots or ()]
    for plot in files:
        if not plot.is_file() or plot.suffix.lower() not in PLOT_SUFFIXES:
            raise ExportError(f"plot {plot} is not an image file ({', '.join(PLOT_SUFFIXES)}); pass existing plots only.")
    return files


def hub_id(name: str | None) -> str | None:
    """`name` if it is a Hub model id, None if it is empty or a local path (which is no `base_model`)."""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name
