"""Peak memory of a 2.5D segmentation of a large stack (issue: 64x1024x1024 uint16 within 4 GB).

    python benchmarks/volume_memory.py [--shape Z Y X] [--anisotropy A] [--precision P]
                                       [--stitch-threshold T]

The stack is a synthetic volume's nuclear channel (64 x 256 x 256, seed 0),
tiled to ``--shape`` and stored as uint16, segmented with the shipped
``nuclei`` model at its own diameter.  The peak resident memory of this
process (``ru_maxrss``) is printed after building the stack and after
segmenting it, with the time; the stack itself is ``Z * Y * X * 2`` bytes.
"""

import argparse
import resource
import time

import numpy as np

from _common import machine

BASE_SHAPE = (64, 256, 256)  # the synthetic volume that is tiled
NUCLEUS_FRACTION = 0.45  # cells of diam_mean / this: nuclei of about diam_mean (see data.synthetic3d)


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 1024, 1024), metavar=("Z", "Y", "X"))
    ap.add_argument("--anisotropy", type=float, default=1.0)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--stitch-threshold", type=float, default=None,
                    help="stitch 2D slices instead of 2.5D")
    args = ap.parse_args()

    from cellpose_nb.data import make_synthetic_volume
    from cellpose_nb.model import load_pretrained
    from cellpose_nb.predict import segment

    model = load_pretrained("nuclei")
    diameter = float(model.config.diam_mean)
    base = make_synthetic_volume(BASE_SHAPE, n_cells=150, diameter=diameter / NUCLEUS_FRACTION,
                                 anisotropy=args.anisotropy, seed=0).image[..., 1]
    reps = [-(-s // b) for s, b in zip(args.shape, BASE_SHAPE)]
    stack = np.tile((base / base.max() * 60000).astype(np.uint16), reps)
    stack = np.ascontiguousarray(stack[tuple(slice(0, s) for s in args.shape)])
    del base
    print(f"stack {stack.shape} uint16, {stack.nbytes / 2**30:.2f} GiB; peak so far "
          f"{peak_gb():.2f} GiB; {machine()}", flush=True)
    mode = ({"stitch_threshold": args.stitch_threshold} if args.stitch_threshold
            else {"do_3d": True, "anisotropy": args.anisotropy})
    t0 = time.perf_counter()
    res = segment(stack, model, diameter=diameter, precision=args.precision, **mode)
    dt = time.perf_counter() - t0
    print(f"segment({', '.join(f'{k}={v}' for k, v in mode.items())}, precision={args.precision}): "
          f"{int(res.labels.max())} masks in {dt:.0f} s; peak resident memory {peak_gb():.2f} GiB "
          "(the stack, the result and all temporaries)")


if __name__ == "__main__":
    main()
