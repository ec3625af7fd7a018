"""Upload a directory written by an export to a Hub model repo, refusing anything that is not a safe
model directory."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import CheckpointError, ConfigError, MaskAEError, cause
from .guards import refuse_pickles


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload a directory written by `save_for_hub` to the Hub model repo `repo_id` (created if needed)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"{repo_id!r} is not a valid Hub repo id; use ORG/NAME made of letters, digits, '-', '_' and '.', "
            "e.g. my-org/maskae-bert."
        ) from None
    folder = Path(folder)
    operations = upload_operations(folder)
    token = get_token()
    if token is None:
        raise MaskAEError("no Hugging Face token found; log in with `hf auth login` or set HF_TOKEN to a write token.")
    api = HfApi(token=token, library_name="maskae")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or f"Upload {folder.resolve().name} with maskae",
            revision=revision,
        )
    except Exception as error:  # the Hub client raises HTTP, network and offline-mode errors of many types
        raise MaskAEError(
            f"the upload of {folder} to the Hub repo {repo_id} failed ({cause(error)}); check the network (and that "
            "HF_HUB_OFFLINE is unset), that your token may write to that repo, then rerun."
        ) from None


def upload_operations(folder: Path) -> list[CommitOperationAdd]:
    """One upload per file of `folder` (hidden files left out), after checking that it is a safe model directory."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json; create an upload directory with `maskae export`.")
    refuse_pickles(folder, "re-export it with `maskae export`.")
    files = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    return [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path)) for path in files]
