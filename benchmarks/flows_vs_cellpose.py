"""Labels -> flows: cellpose_nb vs cellpose 3.1.1.2 on the DSB2018 labels (CPU).

    python benchmarks/flows_vs_cellpose.py [--limit N] [--repeats R]

Prints the mean/min cosine similarity over object pixels and the speed ratio.
Both run once on every image first (numba compilation, caches).
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

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cellpose.dynamics import masks_to_flows as ref_masks_to_flows

    labels = load_labels(dsb_label_files(args.limit))
    cpu = torch.device("cpu")
    ref = lambda lab: ref_masks_to_flows(lab, device=cpu)  # noqa: E731
    print(f"{len(labels)} DSB label images, {sum(int(l.max()) for l in labels)} objects; {machine()}")
    timed(masks_to_flows, labels[:5]), timed(ref, labels[:5])  # warm-up
    t_ours, ours = timed(masks_to_flows, labels, args.repeats)
    t_ref, theirs = timed(ref, labels, args.repeats)
    cos = np.array([(a[:, l > 0] * b[:, l > 0]).sum(0).mean() for l, a, b in zip(labels, ours, theirs) if l.max()])
    print(f"cosine similarity over object pixels: mean {cos.mean():.5f}, min {cos.min():.5f}")
    print(f"cellpose_nb {t_ours:.2f} s, cellpose {t_ref:.2f} s -> {t_ref / t_ours:.1f}x faster")


if __name__ == "__main__":
    main()
