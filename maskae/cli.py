"""The `maskae` command line: `maskae <command> --help` documents each command.

User errors (`MaskAEError`) print one readable line and exit with status 2; `--debug` shows the
traceback instead. So does an `OSError` that nothing below turned into a `MaskAEError` (a permission,
a full disk, a path of the wrong kind): it is about the user's disk, not a bug, and names its path.
`train`, `adapt` and `embed` stop at a safe point on SIGTERM / SIGINT, say how to resume in one line and
exit with 143 / 130 (`utils.preemption`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import commands
from .errors import MaskAEError
from .utils.preemption import Preempted, graceful_stop

# Commands whose long loops stop at a safe point on SIGTERM / SIGINT (exit 143 / 130) and resume exactly.
STOPPABLE = ("train", "adapt", "embed")
from .utils.console import quiet_library_bars


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskae",
        description="Masked text autoencoders: pretrain, embed, evaluate, export and share split encoders.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    parser.add_argument("--quiet", action="store_true", help="only log warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_library_bars()  # in a captured log, their redraws would be fragments glued to the next line
    try:
        if args.command in STOPPABLE:
            with graceful_stop(args.command):
                result = args.func(args)
        else:
            result = args.func(args)
    except Preempted as stop:
        print(f"maskae {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except MaskAEError as error:
        if args.debug:
            raise
        print(f"maskae {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except OSError as error:
        if args.debug:
            raise
        where = f" ({error.filename})" if error.filename else ""
        print(f"maskae {args.command}: error: {error.strerror or error}{where}; check that path and its "
              "permissions, or rerun with --debug for the traceback.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"maskae {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
