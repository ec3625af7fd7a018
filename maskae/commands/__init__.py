"""One module per `maskae` subcommand. Each defines `add_parser(subparsers)`, which registers its
parser and sets `func` (called with the parsed arguments) through `set_defaults`."""
