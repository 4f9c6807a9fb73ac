"""How fast does the ThresholdExplorer answer a slider move?

A 512x512 synthetic image with ~150 cells and a made-up "prediction": the
true flows with smooth noise inside the cells, and a cell probability that
rises with the distance into a cell (as a network's does) plus smooth noise,
so that every knob changes the masks.  The explorer's widget is built
(headless: no browser, no kernel) and its sliders are moved by setting
``slider.value``, which runs the same observer as in Jupyter: recompute the
labels, the count, the AP, and encode the new overlay PNG.

Reported, in ms per move: the first (cache-filling) update, then 20 moves of
each slider (cellprob to values not seen yet, then back over cached values;
flow_threshold; min_size), against ``compute_masks`` from scratch for the
same values.  Target: <= 100 ms per move.

Run:  python benchmarks/explorer_update.py  [--size 512] [--cells 170] [--moves 20]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy import ndimage as ndi

from cellpose_nb.data import make_synthetic
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.masks import compute_masks
from cellpose_nb.metrics import matching
from cellpose_nb.widgets import ThresholdExplorer


def noisy_prediction(labels, *, seed=0):
    """Flows and cellprob logits that look like a decent network's output."""
    rng = np.random.default_rng(seed)
    fg = labels > 0
    flows = masks_to_flows(labels)
    flows = flows + 0.6 * ndi.gaussian_filter(rng.standard_normal(flows.shape), (0, 1.5, 1.5)) * fg
    flows = (flows / np.maximum(np.hypot(flows[0], flows[1]), 1e-6) * fg).astype(np.float32)
    signed = ndi.distance_transform_edt(fg) - ndi.distance_transform_edt(~fg)
    noise = ndi.gaussian_filter(rng.standard_normal(labels.shape), 3.0)
    cellprob = np.clip(1.2 * signed, -8, 8) + 6.0 * noise / noise.std() * 0.25
    return flows, cellprob.astype(np.float32)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, 1e3 * (time.perf_counter() - t0)


def report(name, ms, ref=None):
    ms = np.asarray(ms)
    line = f"{name:<34s} median {np.median(ms):7.1f} ms   max {ms.max():7.1f} ms"
    if ref is not None:
        ref = np.asarray(ref)
        line += f"   | compute_masks median {np.median(ref):7.1f} ms   (x{np.median(ref) / np.median(ms):.1f})"
    print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cells", type=int, default=170)
    ap.add_argument("--moves", type=int, default=20)
    args = ap.parse_args()

    sample = make_synthetic((args.size, args.size), n_cells=args.cells, diameter=30.0, seed=3)
    truth = sample.labels
    flows, cellprob = noisy_prediction(truth)
    print(f"image {truth.shape}, {truth.max()} true cells, CPU threads: {os.cpu_count()}")
    compute_masks(flows, cellprob)  # JIT warm-up of the library kernels, not counted
    ThresholdExplorer(sample.image[:64, :64], flows[:, :64, :64], cellprob[:64, :64]).widget  # and ours

    ex = ThresholdExplorer(sample.image, flows, cellprob, truth=truth)
    _, first = timed(lambda: ex.widget)  # builds the view and runs the first update
    print(f"first update (follow all pixels above cellprob -6, cluster, widget): {first:.0f} ms")
    print(f"  -> {ex.n_cells} cells, AP@0.5 {ex.ap[0.5]:.3f}, AP@0.75 {ex.ap[0.75]:.3f}")
    c = ex.controls
    n = args.moves

    def moves(name, values, **fixed):
        ours, ref, redone = [], [], []
        for v in values:
            _, ms = timed(lambda: setattr(c[name], "value", v))
            ours.append(ms)
            redone.append(ex.n_refollowed)
            p = dict(ex.params)
            lab, ms_ref = timed(lambda: compute_masks(flows, cellprob, **p))
            assert np.array_equal(lab, ex.labels), f"explorer differs from compute_masks at {p}"
            ref.append(ms_ref)
        return ours, ref, redone

    cp_values = np.round(np.linspace(-1.0, 3.75, n) / 0.25) * 0.25
    ours, ref, redone = moves("cellprob_threshold", cp_values)
    report("cellprob, new values (cache miss)", ours, ref)
    print(f"  paths followed again per new value: median {int(np.median(redone))} "
          f"of {int((cellprob > -6).sum())} cached")
    ours, ref, _ = moves("cellprob_threshold", cp_values[::-1])
    report("cellprob, cached values", ours, ref)
    c["cellprob_threshold"].value = 0.0
    ours, ref, _ = moves("flow_threshold", np.round(np.linspace(0.05, 1.5, n), 2))
    report("flow_threshold", ours, ref)
    c["flow_threshold"].value = 0.4
    ours, ref, _ = moves("min_size", np.linspace(0, 400, n).astype(int))
    report("min_size", ours, ref)

    # where the time of one move goes (caches warm)
    cl = ex._clustering(ex.params["cellprob_threshold"])
    labels, t_select = timed(lambda: ex._select(cl, 0.55, 15))
    _, t_ap = timed(lambda: matching(truth, labels, thresholds=(0.5, 0.75)))
    _, t_render = timed(ex._render)
    print(f"one cached move: select+fill+renumber {t_select:.1f} ms, AP {t_ap:.1f} ms, "
          f"overlay+encode {t_render:.1f} ms")
    print("all explorer results were equal to compute_masks")


if __name__ == "__main__":
    main()
