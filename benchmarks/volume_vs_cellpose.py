"""Volumes: cellpose_nb vs cellpose 3.1.1.2 on the CPU, step by step, on one synthetic volume.

    python benchmarks/volume_vs_cellpose.py [--shape Z Y X] [--n-cells N] [--diameter D]
                                            [--anisotropy A] [--repeats R] [--seed S]

Steps (each timed for both after a warm-up on a small volume, and for ours
also one run on the volume itself, so that numba compilation is not timed;
best of ``--repeats``; the ratio is cellpose's time over ours):

1. labels -> flows: ``flows.masks_to_flows`` (3D heat diffusion) against
   ``cellpose.dynamics.masks_to_flows_gpu_3d`` (the true 3D diffusion; run on
   the CPU device).  Agreement: mean cosine of the two fields over object voxels.
2. flows -> masks: ``masks.compute_masks`` against
   ``cellpose.dynamics.compute_masks(do_3D=True, min_size=15)``, both from
   the true flows (ours; cellpose gets them x 5) and cellprob = +5 inside
   cells, -5 outside.  Agreement: AP@0.5 / 0.9 of our masks against
   cellpose's, and the round-trip AP of each against the truth.

The steps are entries of the ``steps`` list built in ``main``; a later step
(the whole 2.5D segmentation) is one more entry there.
"""

import argparse
import time
import warnings

import numpy as np

from _common import machine

WARM_SHAPE = (12, 48, 48)  # the warm-up volume (numba compilation, torch caches)


def ap_3d(true, pred, thresholds):
    """AP of two label volumes (IoU does not change when the volume is viewed as (Z, Y * X))."""
    from cellpose_nb.metrics import average_precision

    return average_precision(true.reshape(true.shape[0], -1), pred.reshape(pred.shape[0], -1),
                             thresholds=thresholds)[0]


def best_time(fn, arg, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    ap.add_argument("--n-cells", type=int, default=100)
    ap.add_argument("--diameter", type=float, default=30.0)
    ap.add_argument("--anisotropy", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from cellpose_nb.data import make_synthetic_volume
    from cellpose_nb.flows import masks_to_flows
    from cellpose_nb.masks import compute_masks

    warnings.simplefilter("ignore")
    from cellpose.dynamics import compute_masks as ref_compute_masks
    from cellpose.dynamics import masks_to_flows_gpu_3d

    cpu = torch.device("cpu")
    vol = make_synthetic_volume(tuple(args.shape), n_cells=args.n_cells, diameter=args.diameter,
                                anisotropy=args.anisotropy, seed=args.seed)
    warm = make_synthetic_volume(WARM_SHAPE, n_cells=3, diameter=16, seed=1)
    labels, n_fg = vol.labels, int((vol.labels > 0).sum())
    print(f"volume {tuple(args.shape)}, {labels.max()} cells, {n_fg} cell voxels, "
          f"diameter {args.diameter}, anisotropy {args.anisotropy}; {machine()}")

    def prob_of(lab):
        return np.where(lab > 0, 5.0, -5.0).astype(np.float32)

    def cosine(ours, theirs):
        fg = labels > 0
        return f"mean cosine {float((ours * theirs).sum(axis=0)[fg].mean()):.6f}"

    def masks_agreement(ours, theirs):
        th = [0.5, 0.9]
        a, t_ours, t_ref = ap_3d(theirs, ours, th), ap_3d(labels, ours, th), ap_3d(labels, theirs, th)
        return (f"AP ours vs cellpose @0.5 {a[0]:.4f} @0.9 {a[1]:.4f}; vs truth @0.5/0.9: "
                f"ours {t_ours[0]:.4f}/{t_ours[1]:.4f}, cellpose {t_ref[0]:.4f}/{t_ref[1]:.4f}")

    flows_true = masks_to_flows(labels)
    # one entry per step: (name, our function, cellpose's function, input, warm-up input, agreement)
    steps = [
        ("3D labels -> flows",
         masks_to_flows,
         lambda lab: masks_to_flows_gpu_3d(lab, device=cpu),
         labels, warm.labels, cosine),
        ("flows -> masks (true flows)",
         lambda fl: compute_masks(fl[0], fl[1]),
         lambda fl: ref_compute_masks(5 * fl[0], fl[1], do_3D=True, min_size=15, device=cpu).astype(np.int32),
         (flows_true, prob_of(labels)), (masks_to_flows(warm.labels), prob_of(warm.labels)),
         masks_agreement),
        # ---- later steps go here: "whole 2.5D segmentation" (network on the YX, ZY and ZX
        # ---- slices, flows averaged, then the 3D mask step) is one more entry of this list
    ]
    for name, ours_fn, ref_fn, arg, warm_arg, agree in steps:
        # warm-up: ours once on the volume itself too, so that the parallel kernels (chosen by
        # size) are compiled before timing; cellpose compiles nothing on these paths
        ours_fn(warm_arg), ours_fn(arg), ref_fn(warm_arg)
        t_ours, out_ours = best_time(ours_fn, arg, args.repeats)
        t_ref, out_ref = best_time(ref_fn, arg, args.repeats)
        print(f"{name}: cellpose_nb {t_ours:.2f} s, cellpose {t_ref:.2f} s -> "
              f"{t_ref / t_ours:.1f}x faster; {agree(out_ours, out_ref)}", flush=True)


if __name__ == "__main__":
    main()
