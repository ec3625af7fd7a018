"""Loading checkpoints without transformers' silent fallbacks: weights that a checkpoint lacks, or whose
names or shapes do not match the architecture, would be initialised at random behind a warning that quiet
consoles hide, and every figure after that would be plausible-looking noise. `load_checked` refuses them
in one line, naming what is missing."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from .errors import CheckpointError


def load_checked(
    model_class,
    name_or_path: str | Path,
    fresh: tuple[str, ...] = (),
    what: str = "a model",
    fix: str = "",
    new_head: bool = False,
    **kwargs,
) -> PreTrainedModel:
    """`model_class.from_pretrained(name_or_path, **kwargs)`, refusing any weight it would initialise at random
    except those under the `fresh` prefixes (a pooler the embedder never runs) and, with `new_head`, everything
    outside the base model and its pooler (a task head about to be trained). `what` names the expected model
    and `fix` the way out, for the one-line error."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report is replaced by the check below
    try:
        model, info = model_class.from_pretrained(str(name_or_path), output_loading_info=True, **kwargs)
    except (OSError, ValueError, SafetensorError) as error:  # a truncated weights file: SafetensorError
        raise CheckpointError(f"cannot load {what} from {str(name_or_path)!r} ({' '.join(str(error).split())[:300]}); "
                              f"{fix or 'pass a directory with config.json and weights, or a Hub model id.'}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    base = f"{model.base_model_prefix}."

    def expected_fresh(key: str) -> bool:
        if key.startswith(fresh) or key in tied:
            return True
        return new_head and (not key.startswith(base) or key.startswith(f"{base}pooler."))

    random = [key for key in info["missing_keys"] if not expected_fresh(key)]
    random += [str(entry[0]) if isinstance(entry, tuple) else str(entry) for entry in info["mismatched_keys"]]
    if random:
        shown = ", ".join(sorted(random)[:3]) + (f" and {len(random) - 3} more" if len(random) > 3 else "")
        raise CheckpointError(
            f"{str(name_or_path)!r} has no trained weights for {shown} of {what} ({type(model).__name__}), which "
            f"transformers would fill at random; {fix or 'pass a checkpoint of that architecture.'}"
        )
    return model
