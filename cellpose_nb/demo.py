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
    _check_free([figure, labels_path] + [out_dir / d[2] for d in SHIPPED_DEMOS], overwrite)
    sample = make_synthetic((size, size), n_cells=n_cells, diameter=30.0, kind="cyto", seed=seed)
    flows = masks_to_flows(sample.labels)
    cellprob = np.where(sample.labels > 0, 5.0, -5.0).astype(np.float32)
    pred = compute_masks(flows, cellprob)
    ap = average_precision([sample.labels], [pred], thresholds=THRESHOLDS)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_labels(labels_path, pred, overwrite=overwrite)
    _save_figure(figure, sample.image, flows, pred)
    lines = []
    paths = [figure, labels_path] + _segment_samples(out_dir, lines)
    return DemoResult(
        n_true=int(sample.labels.max()),
        n_pred=int(pred.max()),
        thresholds=THRESHOLDS,
        ap=ap,
        paths=paths,
        extra_lines=lines,
    )


#: (bundled sample, shipped model, figure name, what the model finds, caveat) shown by the demo
SHIPPED_DEMOS = (
    ("fluorescence", "nuclei", "demo_model.png", "nuclei", "DSB2018, CC0",
     "this image is in the model's training set: a sanity check, not a score"),
    ("whole_cells", "cyto_cil", "demo_whole_cells.png", "cells", "CIL MP6843, CC BY 3.0",
     "this field is in the model's validation split, never trained on"),
)


def _segment_samples(out_dir, lines):
    """Segment the bundled samples with the shipped models; returns the figures written."""
    try:
        from cellpose_nb.model import load_pretrained
        from cellpose_nb.predict import segment
    except ImportError as exc:  # torch layer missing
        lines.append(f"(shipped models skipped: {exc})")
        return []
    from cellpose_nb.data import load_sample
    from cellpose_nb.metrics import average_precision

    written = []
    for sample_name, model_name, figure, objects, source, caveat in SHIPPED_DEMOS:
        try:
            model = load_pretrained(model_name)
        except FileNotFoundError as exc:
            lines.append(f"(shipped model {model_name!r} skipped: {exc})")
            continue
        sample = load_sample(sample_name)
        res = segment(sample.image, model)
        ap = average_precision([sample.labels], [res.labels], thresholds=THRESHOLDS)[0]
        lines.append(f"shipped {model_name} model on the bundled sample {sample.name} "
                     f"(diameter {res.diameter:.1f} px): {int(res.labels.max())} {objects}, "
                     f"{int(sample.labels.max())} annotated")
        lines += [f"  AP@{th:.2f} = {a:.3f}" for th, a in zip(THRESHOLDS, ap)]
        lines.append(f"  ({caveat})")
        _save_figure(out_dir / figure, sample.image, res.flows, res.labels,
                     titles=(f"bundled sample ({source})", "predicted flows",
                             f"shipped {model_name} model: {res.labels.max()} {objects}"))
        written.append(out_dir / figure)
    return written


def _save_figure(path, image, flows, labels, *, titles=None):
    """Three panels (image, flows as colour, masks overlay) written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from cellpose_nb import plot

    titles = titles or ("synthetic cells (cytoplasm, nuclei)", "flows: angle -> hue",
                        f"masks from flows: {labels.max()} cells")
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    plot.show_image(image, ax=axes[0])
    plot.show_flows(flows, ax=axes[1])
    plot.overlay_labels(image, labels, ax=axes[2])
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_axis_off()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
