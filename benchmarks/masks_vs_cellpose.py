"""Flows -> masks: cellpose_nb.compute_masks vs cellpose 3.1.1.2 on the DSB2018 labels (CPU).

    python benchmarks/masks_vs_cellpose.py [--limit N] [--repeats R]

Inputs: the true flows of each label image (ours, unit scale; cellpose gets
them times 5) and cellprob = +5 inside objects, -5 outside.  Prints the round
trip AP against the truth for both, the agreement between the two, and the
speed ratio.  Both run on a few images first (numba compilation, caches).
"""

import argparse
import warnings

import numpy as np

from _common import dsb_label_files, load_labels, machine, timed


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=None, help="use the first N label files")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import torch
    from cellpose_nb.flows import masks_to_flows
    from cellpose_nb.masks import compute_masks
    from cellpose_nb.metrics import average_precision

    warnings.simplefilter("ignore")
    from cellpose.dynamics import compute_masks as ref_compute_masks

    labels = load_labels(dsb_label_files(args.limit))
    inputs = [(masks_to_flows(l), np.where(l > 0, 5.0, -5.0).astype(np.float32)) for l in labels]
    cpu = torch.device("cpu")
    ours_fn = lambda fp: compute_masks(fp[0], fp[1])  # noqa: E731
    ref_fn = lambda fp: ref_compute_masks(5 * fp[0], fp[1], min_size=15, device=cpu).astype(np.int32)  # noqa: E731
    print(f"{len(labels)} DSB label images; {machine()}")
    timed(ours_fn, inputs[:5]), timed(ref_fn, inputs[:5])  # warm-up
    t_ours, ours = timed(ours_fn, inputs, args.repeats)
    t_ref, theirs = timed(ref_fn, inputs, args.repeats)
    th = [0.5, 0.75, 0.9]
    ap_ours = np.nanmean(average_precision(labels, ours, thresholds=th), 0)
    ap_ref = np.nanmean(average_precision(labels, theirs, thresholds=th), 0)
    agree = np.nanmean(average_precision(theirs, ours, thresholds=[0.9]), 0)
    print("round-trip AP vs truth @", th, ": cellpose_nb", np.round(ap_ours, 4), " cellpose", np.round(ap_ref, 4))
    print(f"agreement of ours with cellpose's masks: AP@0.9 = {agree[0]:.4f}")
    print(f"cellpose_nb {t_ours:.2f} s, cellpose {t_ref:.2f} s -> {t_ref / t_ours:.1f}x faster")


if __name__ == "__main__":
    main()
