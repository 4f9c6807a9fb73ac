"""The ``cellpose-nb`` command.

Sub-commands::

    cellpose-nb demo     --out DIR             synthetic cells -> flows -> masks -> AP + figure
    cellpose-nb segment  IMAGES... --out DIR   segment images with a model
    cellpose-nb train    FOLDER --out DIR      train a model on a Cellpose-style folder
    cellpose-nb evaluate TRUE_DIR PRED_DIR     AP table per image and overall

Every command refuses to overwrite existing outputs unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellpose_nb import cli_commands

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------- demo
def _demo(args):
    from cellpose_nb.demo import run_demo

    result = run_demo(
        args.out, seed=args.seed, size=args.size, n_cells=args.n_cells, overwrite=args.overwrite
    )
    print(f"synthetic image {args.size}x{args.size}, seed {args.seed}: {result.n_true} cells")
    print(f"masks from the true flows: {result.n_pred} cells")
    for th, ap in zip(result.thresholds, result.ap):
        print(f"  AP@{th:.2f} = {ap:.3f}")
    for line in result.extra_lines:
        print(line)
    for path in result.paths:
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- parser
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

    demo = sub.add_parser("demo", help="synthetic cells -> flows -> masks -> AP, and a figure")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the synthetic image")
    demo.add_argument("--size", type=int, default=256, help="image side in pixels")
    demo.add_argument("--n-cells", type=int, default=30, help="number of cells to draw")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.set_defaults(func=_demo)

    # segment / train / evaluate: their module imports torch only when a command runs,
    # so `cellpose-nb demo` starts without it
    cli_commands.add_commands(sub)
    return parser


def main(argv=None):
    """Entry point of ``cellpose-nb``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileExistsError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"cellpose-nb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cellpose-nb {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
