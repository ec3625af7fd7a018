"""User-facing errors.

Every problem a user can cause (bad config, bad file, bad checkpoint) raises a `MaskAEError`
subclass whose message is one sentence: what is wrong, where, and how to fix it. The CLI prints
that sentence instead of a traceback.
"""


class MaskAEError(Exception):
    """Base class for all errors that maskae raises on user input."""


class ConfigError(MaskAEError, ValueError):
    """A configuration value is invalid (split layer out of range, unknown decoder, unknown key...)."""


class UnsupportedBackboneError(MaskAEError, ValueError):
    """The checkpoint's model family has no maskae adapter."""


class CheckpointError(MaskAEError, OSError):
    """A checkpoint or model directory is missing, incomplete or corrupt."""


class StorageError(MaskAEError, OSError):
    """The disk refused a write (full, read-only, no permission) or a path is of the wrong kind."""


class DataError(MaskAEError, ValueError):
    """Input data is unusable (empty corpus, non-UTF-8 bytes, wrong columns...)."""


class TokenizerError(MaskAEError, ValueError):
    """The tokenizer cannot be used for denoising (no mask token, vocabulary mismatch...)."""


class ExportError(MaskAEError, ValueError):
    """The model has no equivalent in the requested stock architecture."""


def cause(error: BaseException, limit: int = 300) -> str:
    """The root cause of a library error as one short line: wrappers such as datasets'
    `DatasetGenerationError` say only that something failed, the exception they chain says what."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()) or "no details"
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class MissingExtraError(MaskAEError, ImportError):
    """An optional dependency (an extra such as maskae[onnx]) is not installed."""
