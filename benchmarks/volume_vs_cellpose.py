"""Volumes: cellpose_nb vs cellpose 3.1.1.2 on the CPU, step by step, on one synthetic volume.

    python benchmarks/volume_vs_cellpose.py [--shape Z Y X] [--n-cells N] [--diameter D]
                                            [--anisotropy A] [--repeats R] [--seed S]
                                            [--steps 1 2 3] [--precision bfloat16]

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

3. the whole 2.5D segmentation of the nuclear channel with the shipped
   ``nuclei`` model (exported to a CPnet file, so both run the same weights):
   ``segment(do_3d=True, anisotropy=A)`` against ``CellposeModel.eval(do_3D=True,
   anisotropy=A)``, at the model's own diameter (the synthetic nuclei are drawn
   at ``--diameter`` x ``NUCLEUS_FRACTION`` to match it), the same tiles, batch
   size, cell-probability threshold (0), 200 Euler steps and ``min_size``, float32
   for both (``--precision bfloat16`` runs ours in bfloat16 as well, a second line).
   Agreement: AP of our masks against cellpose's, and of both against the true nuclei.

The steps are entries of the ``steps`` list built in ``main``.
"""

import argparse
import time
import warnings

import numpy as np

from _common import machine

WARM_SHAPE = (12, 48, 48)  # the warm-up volume (numba compilation, torch caches)
#: step 3 draws cells of --diameter / NUCLEUS_FRACTION: their nuclei (0.4-0.5 of a cell,
#: see data.synthetic3d) are then about the nuclei model's diameter
NUCLEUS_FRACTION = 0.45
BATCH_SIZE = 8  # cellpose's eval default, for both


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
    ap.add_argument("--steps", nargs="+", type=int, default=(1, 2, 3), choices=(1, 2, 3),
                    help="which steps to run")
    ap.add_argument("--precision", default=None, choices=("bfloat16",),
                    help="also time ours in this precision in step 3")
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

    # one entry per step: (name, our function, cellpose's function, input, warm-up input, agreement)
    steps = []
    if 1 in args.steps:
        steps.append(("3D labels -> flows",
                      masks_to_flows,
                      lambda lab: masks_to_flows_gpu_3d(lab, device=cpu),
                      labels, warm.labels, cosine))
    if 2 in args.steps:
        flows_true = masks_to_flows(labels)
        steps.append(("flows -> masks (true flows)",
                      lambda fl: compute_masks(fl[0], fl[1]),
                      lambda fl: ref_compute_masks(5 * fl[0], fl[1], do_3D=True, min_size=15,
                                                   device=cpu).astype(np.int32),
                      (flows_true, prob_of(labels)),
                      (masks_to_flows(warm.labels), prob_of(warm.labels)), masks_agreement))
    if 3 in args.steps:
        steps += whole_segmentation_steps(args)
    for name, ours_fn, ref_fn, arg, warm_arg, agree in steps:
        # warm-up: ours once on the volume itself too, so that the parallel kernels (chosen by
        # size) are compiled before timing; cellpose compiles nothing on these paths
        ours_fn(warm_arg), ours_fn(arg), ref_fn(warm_arg)
        t_ours, out_ours = best_time(ours_fn, arg, args.repeats)
        t_ref, out_ref = best_time(ref_fn, arg, args.repeats)
        print(f"{name}: cellpose_nb {t_ours:.2f} s, cellpose {t_ref:.2f} s -> "
              f"{t_ref / t_ours:.1f}x faster; {agree(out_ours, out_ref)}", flush=True)


def whole_segmentation_steps(args):
    """Step 3: the nuclei model on the nuclear channel of a volume, both implementations."""
    import tempfile
    from pathlib import Path

    from cellpose_nb.data import make_synthetic_volume
    from cellpose_nb.model import cellpose_reference_model, export_cellpose_weights, load_pretrained
    from cellpose_nb.predict import segment

    model = load_pretrained("nuclei")
    diameter = float(model.config.diam_mean)
    vol = make_synthetic_volume(tuple(args.shape), n_cells=args.n_cells,
                                diameter=diameter / NUCLEUS_FRACTION, anisotropy=args.anisotropy,
                                seed=args.seed)
    warm = make_synthetic_volume(WARM_SHAPE, n_cells=3, diameter=diameter / NUCLEUS_FRACTION,
                                 anisotropy=args.anisotropy, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        reference = cellpose_reference_model(export_cellpose_weights(model, Path(tmp) / "nuclei"))
    reference.net_ortho = None  # cellpose 3's optional second network for ZY/ZX: not used
    knobs = dict(diameter=diameter, do_3d=True, anisotropy=args.anisotropy, cellprob_threshold=0.0,
                 batch_size=BATCH_SIZE, n_iter=200, min_size=15)

    def ours(precision):
        return lambda img: segment(img, model, precision=precision, **knobs).labels

    def ref(img):
        return reference.eval(img, channels=[0, 0], diameter=diameter, do_3D=True,
                              anisotropy=args.anisotropy, z_axis=0, batch_size=BATCH_SIZE,
                              cellprob_threshold=0.0, min_size=15, niter=200)[0].astype(np.int32)

    def agreement(o, r):
        th = [0.5, 0.75, 0.9]
        a, t_o, t_r = ap_3d(r, o, th), ap_3d(vol.nuclei, o, th), ap_3d(vol.nuclei, r, th)
        return (f"{o.max()} / {r.max()} masks (ours / cellpose); AP ours vs cellpose @0.5/0.75/0.9 "
                f"{a[0]:.3f}/{a[1]:.3f}/{a[2]:.3f}; vs the true nuclei @0.5: ours {t_o[0]:.3f}, "
                f"cellpose {t_r[0]:.3f}")

    img, warm_img = vol.image[..., 1], warm.image[..., 1]
    print(f"step 3: {int(vol.nuclei.max())} nuclei, model diameter {diameter:g}", flush=True)
    out = [("whole 2.5D segmentation, float32", ours("float32"), ref, img, warm_img, agreement)]
    if args.precision:
        out.append((f"whole 2.5D segmentation, ours in {args.precision}", ours(args.precision),
                    ref, img, warm_img, agreement))
    return out


if __name__ == "__main__":
    main()
