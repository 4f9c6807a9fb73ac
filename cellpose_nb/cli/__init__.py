"""The ``cellpose-nb`` command, one file per sub-command.

Sub-commands::

    cellpose-nb demo     --out DIR             synthetic cells -> flows -> masks -> AP + figure
    cellpose-nb segment  IMAGES... --out DIR   segment images with a model
    cellpose-nb train    FOLDER --out DIR      train a model on a Cellpose-style folder
    cellpose-nb evaluate TRUE_DIR PRED_DIR     AP table per image and overall
    cellpose-nb export-bioimageio MODEL OUT.zip   a model as a BioImage Model Zoo package

Every command refuses to overwrite existing outputs unless ``--overwrite``.
Errors are printed as one line, never as a traceback (``--debug`` shows it).
Exit codes: 0 done; 1 a failure during the work (an image that could not be
segmented, a missing prediction, a full disk); 2 bad input, found before the
work (a wrong option, file or setting); 3 stopped by ``--max-minutes``
(``train``; resume with ``--resume``); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from cellpose_nb.cli import demo, evaluate, export_bioimageio, segment, train
from cellpose_nb.cli._common import parse_channels, parse_invert

__all__ = ["main", "build_parser", "parse_channels", "parse_invert"]

SUBCOMMANDS = (demo, segment, train, evaluate, export_bioimageio)
#: exceptions that are the user's to fix: printed as one line, exit code EXIT_BAD_INPUT
USER_ERRORS = (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, ValueError, TypeError)
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


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
    debug = dict(action="store_true", help="show the traceback of an error")
    parser.add_argument("--debug", **debug)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    for sub_parser in sub.choices.values():  # also after the sub-command's name
        sub_parser.add_argument("--debug", default=argparse.SUPPRESS, **debug)
    return parser


def _one_line(exc) -> str:
    """The error as one line, with the file an OSError names when its text does not."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f" ({exc.filename})"
    return " ".join(text.split())


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt  # the same clean-up and exit code as Ctrl-C


def main(argv=None):
    """Entry point of ``cellpose-nb``; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    prefix = f"cellpose-nb {args.command}"
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if _main_thread() else None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, USER_ERRORS):
            print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if isinstance(exc, (OSError, MemoryError)):  # the machine's, not the input's
            print(f"{prefix}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        else:  # a bug: say so, and how to see where
            print(f"{prefix}: internal error: {type(exc).__name__}: {_one_line(exc)} "
                  "(--debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
