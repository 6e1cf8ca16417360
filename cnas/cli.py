"""``cnas`` command line: the data commands of ``pipeline/cli.py`` and the training commands of
``trainers/cli.py`` under one parser. The only module that imports both sides."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline import cli as data_cli
from trainers import cli as train_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnas", description="CNAS toolkit: videos -> WebDataset shards -> models")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.add_commands(sub)
    train_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"cnas {args.command}: error: {e}", file=sys.stderr)
        return data_cli.EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
