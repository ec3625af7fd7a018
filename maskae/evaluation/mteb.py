"""Any maskae model, at any layer, as an MTEB model: the benchmark's own tasks, metrics and result files,
so a figure can be compared with the MTEB leaderboard's and not only with maskae's STS-B and probes.

`MTEBEncoder` implements mteb 2's `EncoderProtocol` over `Embedder.embed` with fixed settings;
`evaluate_mteb` runs named tasks (or task objects, such as a local one) and returns each main score.
maskae models take no instruction prompts, so MTEB's prompts are ignored. mteb is the `mteb` extra.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets.exceptions import DatasetNotFoundError

from ..embeddings.embedder import Embedder
from ..embeddings.graphs import GraphEmbedder
from ..errors import ConfigError, DataError
from ..utils.extras import import_extra
from .results import EvaluationResult

if TYPE_CHECKING:
    from mteb import AbsTask
    from mteb.models import ModelMeta
    from torch.utils.data import DataLoader


def _mteb(module: str = "mteb") -> Any:
    return import_extra(module, "mteb", "MTEB evaluation")


class MTEBEncoder:
    """A maskae `Embedder` (or exported graph) as an MTEB encoder: one layer, pooling, normalisation and
    whitening for every task; cosine similarity; named `maskae/<model>-layer<k>` (`-code` for a MaskAE
    model's code) in MTEB's results."""

    def __init__(
        self,
        model: str | Path | Embedder | GraphEmbedder,
        *,
        layer: int | None = None,
        pooling: str | None = None,
        normalize: bool = False,
        whiten: bool = True,
        backend: str | None = None,
        dtype: str | None = None,
    ) -> None:
        meta = _mteb("mteb.models.model_meta")
        self.embedder = model if isinstance(model, (Embedder, GraphEmbedder)) else Embedder.from_pretrained(
            model, backend=backend, dtype=dtype)
        self.layer, self.pooling, self.normalize, self.whiten = layer, pooling, normalize, whiten
        if isinstance(self.embedder, GraphEmbedder):
            self.embedder.check_request(layer, pooling, whiten=whiten)
            source, depth, revision = self.embedder.directory, self.embedder.layer, None
            pooling, whitened = self.embedder.pooling, self.embedder.whitened
            framework = "ONNX" if self.embedder.backend == "onnx" else "OpenVINO"
        else:
            pooling = pooling or "mean"
            layers = self.embedder.check_request(layer, pooling)
            source, depth = self.embedder.model.name_or_path, None if layers is None else layers[0]
            revision = getattr(self.embedder.model.config, "_commit_hash", None)  # a Hub download's commit
            whitened, framework = whiten and self.embedder.whitening_for(layer, pooling) is not None, "PyTorch"
        name = f"maskae/{Path(str(source)).name or 'model'}-" + ("code" if depth is None else f"layer{depth}")
        # the settings that change the vectors name an experiment, so that their result files stay apart
        self.mteb_model_meta: ModelMeta = meta.ModelMeta.create_empty(overwrites=dict(
            name=name, revision=revision, max_tokens=self.embedder.max_length, framework=[framework],
            similarity_fn_name=meta.ScoringFunction.COSINE, use_instructions=False, modalities=["text"],
            experiment_kwargs={"pooling": pooling, "normalize": normalize, "whitened": whitened,
                               "dtype": self.embedder.dtype},
        ))

    def encode(self, inputs: DataLoader, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """[n, dim] float32 vectors of the texts of `inputs` (batches of dicts with a "text" list), in order."""
        texts = [text for batch in inputs for text in batch["text"]]
        return self.embedder.embed(texts, layer=self.layer, pooling=self.pooling, normalize=self.normalize,
                                   batch_size=kwargs.get("batch_size", 32), whiten=self.whiten,
                                   show_progress=kwargs.get("show_progress_bar", False))

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Cosine similarity of every row of `embeddings1` with every row of `embeddings2`."""
        return _mteb("mteb.similarity_functions").cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Cosine similarity of each row of `embeddings1` with the same row of `embeddings2`."""
        return _mteb("mteb.similarity_functions").pairwise_cos_sim(embeddings1, embeddings2)


class MtebResult(EvaluationResult):
    """`maskae evaluate --task mteb`: the main scores (MTEB's scale) by task, printed x100."""

    def __str__(self) -> str:
        at = "the default layer" if self["layer"] is None else f"layer {self['layer']}"
        lines = [f"MTEB main score x100 of each task ({self.get('model', 'model')} at {at})"]
        lines += [f"  {task:<32} {100 * score:6.2f}" for task, score in self["main_scores"].items()]
        if self["output"]:
            lines.append(f"MTEB result files in {self['output']}")
        return "\n".join(lines)


def resolve_tasks(tasks: Sequence[str | AbsTask]) -> list[AbsTask]:
    """MTEB task objects for names (as `mteb.get_task` spells them) or task objects, text tasks only."""
    mteb = _mteb()
    if not tasks:
        raise ConfigError("no MTEB task given; pass task names such as STSBenchmark,SICK-R.")
    resolved = []
    for task in tasks:
        if isinstance(task, str):
            try:
                task = mteb.get_task(task.strip())
            except KeyError as error:
                guess = re.search(r"Did you mean: '([^']+)'", str(error))
                hint = f" (did you mean {guess[1]}?)" if guess else ""
                raise ConfigError(f"unknown MTEB task {task.strip()!r}{hint}; pass task names as MTEB spells them, "
                                  "e.g. STSBenchmark (mteb.get_tasks() lists them all).") from None
        if set(task.metadata.modalities) != {"text"}:
            raise ConfigError(f"MTEB task {task.metadata.name} is not text-only ({', '.join(task.metadata.modalities)}); "
                              "maskae models embed text, so pass text tasks.")
        resolved.append(task)
    return resolved


@contextmanager
def _quiet_mteb() -> Iterator[None]:
    """mteb logs every phase at INFO; keep its warnings, drop the rest."""
    logger = logging.getLogger("mteb")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def evaluate_mteb(
    model: str | Path | Embedder | GraphEmbedder,
    tasks: Sequence[str | AbsTask],
    *,
    layer: int | None = None,
    pooling: str | None = None,
    normalize: bool = False,
    whiten: bool = True,
    backend: str | None = None,
    dtype: str | None = None,
    batch_size: int = 32,
    output_folder: str | Path | None = None,
) -> dict[str, float]:
    """Each task's MTEB main score (MTEB's scale: cosine Spearman of STS in [-1, 1], not x100), by task name.

    `tasks` are names (`mteb.get_task` spelling) or task objects; the embedding settings are those of
    `maskae.embed`. `output_folder` keeps MTEB's result files (a `ResultCache` there); by default none is
    written. Every task is run afresh, never read back from earlier results.
    """
    mteb = _mteb()
    resolved = resolve_tasks(tasks)
    encoder = MTEBEncoder(model, layer=layer, pooling=pooling, normalize=normalize, whiten=whiten,
                          backend=backend, dtype=dtype)
    cache = mteb.ResultCache(output_folder) if output_folder is not None else None
    try:
        with _quiet_mteb():
            results = mteb.evaluate(encoder, resolved, encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                                    cache=cache, overwrite_strategy="always", show_progress_bar=False, co2_tracker=False)
    except (ConnectionError, DatasetNotFoundError) as error:
        raise DataError(f"an MTEB task's data could not be loaded ({' '.join(str(error).split())}); MTEB downloads it "
                        "from the Hugging Face Hub, so run once online (HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset) "
                        "to cache it.") from None
    return {result.task_name: float(result.get_score()) for result in results.task_results}
