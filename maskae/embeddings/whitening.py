"""Whitening of sentence embeddings, fitted on unlabelled text (Su et al. 2021, *Whitening Sentence
Representations for Better Semantics and Faster Retrieval*; Huang et al. 2021, *WhiteningBERT*).

Pooled embeddings of a transformer are anisotropic: a common mean and a few dominant directions
swamp the cosine similarity. Whitening subtracts the mean and rotates and rescales so that the
covariance becomes the identity; keeping only the top `dim` directions is a dimension reduction.
It needs no labels, but it is domain-sensitive: fit it on text like the text it will embed.

A fitted `Whitening` is stored beside the model as `whitening.safetensors` and recorded in the
model's config.json (key `whitening`), so that `embed`, `evaluate` and the exports apply it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ..errors import CheckpointError, ConfigError, DataError

logger = logging.getLogger(__name__)

FILE_NAME = "whitening.safetensors"
CONFIG_KEY = "whitening"
FLAT_DIRECTION = 1e-9  # a direction whose variance is below this fraction of the largest one is dropped
DEFAULT_MAX_TEXTS = 10_000  # texts a fit reads by default: the covariance of a 384-wide embedding is settled well before


@dataclass
class Whitening:
    """`apply(x) = (x - mean) @ matrix`, fitted on the embeddings at `layer` (None: the model's default
    output) pooled with `pooling`. `matrix` is [d, k], k = the directions kept: `dim` when the fit
    asked for it, else every direction the fitting texts vary in (d, or d - 1 for post-LayerNorm
    encoders; see `whitening_from_vectors`)."""

    mean: np.ndarray
    matrix: np.ndarray
    layer: int | None = None
    pooling: str = "mean"
    num_texts: int = 0

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whitened copies of the rows of `x` [n, d] (float64, [n, k])."""
        return (np.asarray(x, np.float64) - self.mean) @ self.matrix

    def save(self, model_dir: str | Path) -> Path:
        """Write `whitening.safetensors` into `model_dir` and record it in its config.json."""
        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{str(model_dir)!r} has no config.json; save the model there before its whitening.")
        metadata = {"layer": json.dumps(self.layer), "pooling": self.pooling, "dim": str(self.dim),
                    "num_texts": str(self.num_texts)}
        save_file({"mean": np.ascontiguousarray(self.mean), "matrix": np.ascontiguousarray(self.matrix)},
                  str(model_dir / FILE_NAME), metadata=metadata)
        config = json.loads(config_path.read_text())
        config[CONFIG_KEY] = {"file": FILE_NAME, "layer": self.layer, "pooling": self.pooling, "dim": self.dim}
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return model_dir / FILE_NAME

    @classmethod
    def load(cls, model_dir: str | Path) -> Whitening | None:
        """The whitening recorded in the config.json of `model_dir` (a directory or Hub id), or None."""
        config_path = _cached(model_dir, "config.json")
        if config_path is None:
            return None
        entry = json.loads(Path(config_path).read_text()).get(CONFIG_KEY)
        if not entry:
            return None
        path = _cached(model_dir, entry.get("file", FILE_NAME))
        if path is None:  # e.g. a plain save_pretrained of a whitened model copies the config, not the file
            logger.warning("%s records a whitening in config.json but lacks %s; embedding without it (refit it "
                           "with `maskae whiten`)", model_dir, entry.get("file", FILE_NAME))
            return None
        tensors = load_file(path)
        with safe_open(path, framework="np") as handle:
            metadata = handle.metadata() or {}
        return cls(
            mean=tensors["mean"],
            matrix=tensors["matrix"],
            layer=json.loads(metadata.get("layer", "null")),
            pooling=metadata.get("pooling", "mean"),
            num_texts=int(metadata.get("num_texts", 0)),
        )


def _cached(source: str | Path, name: str) -> str | None:
    """A file of a model directory or Hub repo, or None where it has none."""
    from transformers.utils import (
        cached_file,  # Hub lookups only; loading a local whitening needs none
    )

    local = Path(source) / name
    if local.is_file():
        return str(local)
    if Path(source).is_dir():
        return None
    try:
        return cached_file(str(source), name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except OSError:
        return None


def check_dim(dim: int, whitening: Whitening | None) -> None:
    """`dim` keeps the top directions of a whitening (they come sorted by variance): refuse it where there is
    no whitening to cut, or fewer directions than asked."""
    if whitening is None:
        raise ConfigError(f"--dim {dim} keeps the top directions of the model's whitening, but none applies to this "
                          "layer and pooling; run maskae whiten first (same --layer and --pooling), or remove --dim.")
    if not 1 <= dim <= whitening.dim:
        raise ConfigError(f"--dim {dim} is out of range: the whitening keeps {whitening.dim} directions; choose 1 to "
                          f"{whitening.dim}.")


def whitening_from_vectors(vectors: np.ndarray, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, matrix) that map `vectors` [n, d] to zero mean and identity covariance (1/n normalised),
    keeping the top `dim` directions. Computed in float64, through the SVD of the covariance.

    By default every direction is kept in which the texts vary: a post-LayerNorm encoder's mean-pooled
    vectors lie in a hyperplane (the normalised tokens sum to zero), and scaling that flat direction
    up by 1/sqrt(~1e-16) would turn float rounding into a full-size noise coordinate.
    """
    x = np.asarray(vectors, np.float64)
    n, d = x.shape
    if dim is not None and not 1 <= dim <= d:
        raise DataError(f"whitening dim={dim} is out of range for {d}-wide embeddings; choose 1 to {d}.")
    if n <= (dim or d):
        raise DataError(
            f"{n} texts are too few to whiten {dim or d} dimensions; fit on more texts than dimensions "
            f"(a few times {dim or d} is better) or pass a smaller dim."
        )
    mean = x.mean(axis=0)
    centred = x - mean
    u, s, _ = np.linalg.svd(centred.T @ centred / n)
    rank = int(np.sum(s > s[0] * FLAT_DIRECTION))
    if dim is not None and dim > rank:
        raise DataError(
            f"the {n} texts vary in only {rank} directions of the {d}-wide embeddings, so they cannot be "
            f"whitened to {dim} dimensions; pass dim <= {rank} or fit on more varied texts."
        )
    k = dim or rank
    return mean, u[:, :k] / np.sqrt(s[:k])
