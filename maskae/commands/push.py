"""`maskae push DIR --repo-id ORG/NAME`: upload a directory written by `maskae export` to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload an exported model directory to the Hugging Face Hub",
        description=(
            "Create the model repo ORG/NAME on the Hub if it does not exist and upload every file of DIR (a "
            "directory written by `maskae export`) in one commit. DIR must hold a config.json and no pickle "
            "files. Needs a token with write access: run `hf auth login` or set HF_TOKEN."
        ),
        epilog="example: maskae push hub/tiny --repo-id my-org/maskae-tiny --private",
    )
    parser.add_argument("folder", metavar="DIR", type=Path, help="directory written by `maskae export`")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="Hub model repo to upload to")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    parser.add_argument("--revision", metavar="R", help="branch to commit to (created if needed; default: main)")
    parser.add_argument("--commit-message", metavar="M", help="commit message (default: Upload DIR with maskae)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.push import push_folder

    commit = push_folder(
        args.folder, args.repo_id, private=args.private, revision=args.revision, commit_message=args.commit_message
    )
    print(commit.commit_url)
    return 0
