"""``cnas`` command line: the data commands of ``pipeline/cli.py`` and the training commands of
``trainers/cli.py`` under one parser. The only module that imports both sides."""

from __future__ import annotations

import argparse
import sys

from pipeline import cli as data_cli
from pipeline.engine.console import terminal
from trainers import cli as train_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnas", description="CNAS toolkit: videos -> WebDataset shards -> models")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging; third-party warnings and Ray worker output on the terminal too (else in OUT/logs/)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.add_commands(sub)
    train_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pipeline.engine.console import setup_logging

    setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"cnas {args.command}: error: {e}", file=terminal())
        return data_cli.EXIT_ERROR
    except Exception:  # with the native stderr routed away, the traceback would only be in the log
        if terminal() is not sys.stderr:
            import traceback

            traceback.print_exc(file=terminal())
        raise


if __name__ == "__main__":
    sys.exit(main())
