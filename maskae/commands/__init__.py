"""One thin module per `maskae` subcommand: argparse plus one library call. Each defines
`add_parser(subparsers)`, which registers its parser and sets `func` (called with the parsed
arguments) through `set_defaults`; heavy imports happen inside `func`, so `maskae --help` stays fast.

May import: everything below it."""
