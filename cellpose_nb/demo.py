"""The main job of the README: the whole method on an embedded default.

Synthetic cells -> their flows -> masks recovered from the flows -> AP
against the truth, and a figure (image, flow field as colour, masks overlay).
When the shipped nuclei model is available, a bundled sample image is also
segmented with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["DemoResult", "run_demo"]

THRESHOLDS = (0.5, 0.75, 0.9)


class DemoResult(NamedTuple):
    n_true: int  #: cells drawn
    n_pred: int  #: masks recovered
    thresholds: tuple  #: IoU thresholds
    ap: np.ndarray  #: AP at each threshold
    paths: list  #: files written
    extra_lines: list  #: more lines to report (e.g. the model's result)


def _check_free(paths, overwrite):
    if overwrite:
        return
    for p in paths:
        if Path(p).exists():
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")


def run_demo(out_dir, *, seed=0, size=256, n_cells=30, overwrite=False):
    """Run the demo and write ``demo.png`` (and ``demo_labels.tif``) into ``out_dir``.

    Parameters
    ----------
    out_dir : path
    seed, size, n_cells : synthetic image settings
    overwrite : bool
        Replace existing outputs.

    Returns
    -------
    DemoResult
    """
    from cellpose_nb.data import make_synthetic, write_labels
    from cellpose_nb.flows import masks_to_flows
    from cellpose_nb.masks import compute_masks
    from cellpose_nb.metrics import average_precision

    out_dir = Path(out_dir)
    figure, labels_path = out_dir / "demo.png", out_dir / "demo_labels.tif"
    _check_free([figure, labels_path], overwrite)
    sample = make_synthetic((size, size), n_cells=n_cells, diameter=30.0, kind="cyto", seed=seed)
    flows = masks_to_flows(sample.labels)
    cellprob = np.where(sample.labels > 0, 5.0, -5.0).astype(np.float32)
    pred = compute_masks(flows, cellprob)
    ap = average_precision([sample.labels], [pred], thresholds=THRESHOLDS)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_labels(labels_path, pred, overwrite=overwrite)
    _save_figure(figure, sample.image, flows, pred)
    return DemoResult(
        n_true=int(sample.labels.max()),
        n_pred=int(pred.max()),
        thresholds=THRESHOLDS,
        ap=ap,
        paths=[figure, labels_path],
        extra_lines=[],
    )


def _save_figure(path, image, flows, labels):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from cellpose_nb import plot

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    plot.show_image(image, ax=axes[0])
    axes[0].set_title("synthetic cells (cytoplasm, nuclei)")
    plot.show_flows(flows, ax=axes[1])
    axes[1].set_title("flows: angle -> hue")
    plot.overlay_labels(image, labels, ax=axes[2])
    axes[2].set_title(f"masks from flows: {labels.max()} cells")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
