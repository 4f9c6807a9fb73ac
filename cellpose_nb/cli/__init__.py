"""The ``cellpose-nb`` command, one file per sub-command.

Sub-commands::

    cellpose-nb demo     --out DIR             synthetic cells -> flows -> masks -> AP + figure
    cellpose-nb segment  IMAGES... --out DIR   segment images with a model
    cellpose-nb train    FOLDER --out DIR      train a model on a Cellpose-style folder
    cellpose-nb evaluate TRUE_DIR PRED_DIR     AP table per image and overall

Every command refuses to overwrite existing outputs unless ``--overwrite``.
Errors are printed as one line (exit code 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import sys

from cellpose_nb.cli import demo, evaluate, segment, train
from cellpose_nb.cli._common import parse_channels, parse_invert

__all__ = ["main", "build_parser", "parse_channels", "parse_invert"]

SUBCOMMANDS = (demo, segment, train, evaluate)
#: exceptions that are the user's to fix: printed as one line, exit code 2
USER_ERRORS = (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, ValueError, TypeError)


def build_parser():
    """The argument parser of ``cellpose-nb`` (exposed for the docs and tests).

    Examples
    --------
    >>> build_parser().parse_args(["demo", "--out", "x"]).command
    'demo'
    """
    parser = argparse.ArgumentParser(
        prog="cellpose-nb", description="Cell segmentation the Cellpose way."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None):
    """Entry point of ``cellpose-nb``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"cellpose-nb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cellpose-nb {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
