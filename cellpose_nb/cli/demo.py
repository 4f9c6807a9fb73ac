"""``cellpose-nb demo``: the README's main job (see :mod:`cellpose_nb.demo`)."""

from __future__ import annotations

from pathlib import Path

from cellpose_nb.cli._common import default_of
from cellpose_nb.demo import run_demo


def add_parser(sub):
    demo = sub.add_parser("demo", help="synthetic cells -> flows -> masks -> AP, and a figure")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--seed", type=int, default=default_of(run_demo, "seed"), help="random seed of the synthetic image")
    demo.add_argument("--size", type=int, default=default_of(run_demo, "size"), help="image side in pixels")
    demo.add_argument("--n-cells", type=int, default=default_of(run_demo, "n_cells"), help="number of cells to draw")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.set_defaults(func=run)


def run(args):
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
