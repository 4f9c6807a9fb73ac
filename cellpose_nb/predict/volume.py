"""Volumes: Cellpose's 2.5D segmentation and slice stitching.

Two ways to segment a (Z, Y, X) stack with a 2D network, as Cellpose 3.1.1.2:

* **2.5D** (``do_3d=True``): Z is resampled by the anisotropy (and every axis
  by ``diam_mean / diameter``) so that voxels are cubes at the model's cell
  size; the 2D network runs on the YX, ZX and ZY slices (batched, tiled,
  optionally flipped, as in 2D: :func:`~cellpose_nb.predict.run_net_stack`);
  each flow component is estimated by the two slice orientations that contain
  its axis and the cell probability by all three; the outputs are resized
  back and the flows followed in 3D (:func:`~cellpose_nb.masks3d.compute_masks_3d`).
* **Stitching** (``stitch_threshold=t``): every YX slice is segmented in 2D
  and the masks of consecutive slices are linked by IoU
  (:func:`~cellpose_nb.stitch.stitch_slices`).

The whole volume is normalised at once (Cellpose's ``norm3D``): percentiles
over all slices, so that a dim slice stays dim.  Memory: the network input
(2 float32 channels) and one (4, Z, Y, X) float32 sum of the outputs, at the
resampled size; no orientation's outputs are stored whole.

The Z flow is predicted in resampled slices and is divided by the anisotropy
when it is resized back, so that a step is measured in the volume's own
slices.  Cellpose 3.1.1.2 does not divide it: with an anisotropy of 3 its
particles overshoot by 3x along Z and cells lose voxels (notebook 09 measures
it); at anisotropy 1 the two are the same.

Cellpose *adds* the two estimates of each flow component and the three cell
probabilities (it does not average them).  Here ``Segmentation.flows`` and
``cellprob`` are the means, so that they read as 2D ones; the flows are
followed at ``FLOW_GAIN_3D`` times the mean, which is Cellpose's sum (the same
Euler steps, the same masks), and the cell probability threshold applies to
the mean logit: a model's tuned 2D threshold means the same in 3D (Cellpose
thresholds the sum; at the default 0 the two agree).
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.masks import compute_masks
from cellpose_nb.masks3d import (
    compute_masks_3d,
    fill_holes_and_remove_small_masks_3d,
    remove_bad_flow_masks_3d,
)
from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict.config import model_thresholds
from cellpose_nb.predict.diameter import _stored_size_model, check_diameter
from cellpose_nb.predict.net import _resize, n_iter_for, run_net_stack
from cellpose_nb.predict.passes import (
    Segmentation,
    _estimate_and_run,
    _fallback_diameter,
    _input_notes,
    input_knobs,
)
from cellpose_nb.stitch import stitch_slices

__all__ = ["ANISOTROPY", "FLOW_GAIN_3D", "MIN_SIDE_3D", "volume_input", "predict_flows_3d",
           "segment_slices", "segment_volume", "resampled_shape", "masks_3d"]

ANISOTROPY = 1.0  # Z step / XY pixel size; 1: isotropic voxels
#: Cellpose follows the sum of the two estimates of each flow component: twice their mean
FLOW_GAIN_3D = 2.0
#: every axis of the resampled volume must be at least this long: shorter ZX/ZY slices
#: hold no cell the network could read
MIN_SIDE_3D = 8
# (slice axis, the volume axes of the slice's rows and columns), for the (Z, Y, X) volume
_ORIENTATIONS = (("YX", 0, (1, 2)), ("ZX", 1, (0, 2)), ("ZY", 2, (0, 1)))


def _check_anisotropy(anisotropy):
    try:
        a = float(anisotropy)
    except (TypeError, ValueError):
        a = math.nan
    if not (math.isfinite(a) and a > 0) or isinstance(anisotropy, bool):
        raise ValueError(f"anisotropy must be a finite positive number (the Z step over the "
                         f"XY pixel size, e.g. 2.0 for 0.5 um pixels and 1 um slices); "
                         f"got {anisotropy!r}")
    return a


def _volume_zyxc(volume, z_axis, channel_axis):
    """The volume as (Z, Y, X, C), with clear errors for shapes that are not volumes."""
    arr = np.asarray(volume)
    if arr.ndim == 2:
        raise ValueError(f"a volume must be (Z, Y, X) or (Z, Y, X, C); got a 2-D image of shape "
                         f"{arr.shape}: segment it without do_3d / stitch_threshold")
    if arr.ndim not in (3, 4):
        raise ValueError(f"a volume must be (Z, Y, X) or (Z, Y, X, C); got shape {arr.shape}")
    if arr.ndim == 4 and channel_axis is None:
        raise ValueError(f"a 4-D volume of shape {arr.shape} needs channel_axis= (and z_axis= "
                         "if Z is not axis 0): which axis holds the channels")
    if arr.ndim == 3 and channel_axis is not None:
        raise ValueError(f"channel_axis={channel_axis} given, but the volume of shape "
                         f"{arr.shape} has 3 axes: (Z, Y, X) has no channel axis")
    axes = list(range(arr.ndim))
    z = 0 if z_axis is None else z_axis
    try:
        z = axes[z]
        c = None if channel_axis is None else axes[channel_axis]
    except (IndexError, TypeError):
        raise ValueError(f"z_axis={z_axis!r} / channel_axis={channel_axis!r} are not axes of a "
                         f"volume of shape {arr.shape}") from None
    if z == c:
        raise ValueError(f"z_axis and channel_axis are the same axis ({z}) of shape {arr.shape}")
    rest = [a for a in axes if a not in (z, c)]
    arr = arr.transpose([z, *rest] + ([c] if c is not None else []))
    if arr.shape[0] == 1:
        raise ValueError(f"the volume of shape {np.shape(volume)} has one slice along z_axis: "
                         "a stack of one slice is a 2-D image; segment volume[0] without do_3d")
    return arr if arr.ndim == 4 else arr[..., None]


def volume_input(volume, *, channels=(0, None), z_axis=None, channel_axis=None, normalize=True,
                 invert=False):
    """The network input of a volume: (2, Z, Y, X) float32, normalised over the whole volume.

    Parameters
    ----------
    volume : ndarray (Z, Y, X), or 4-D with ``channel_axis``
    channels, normalize, invert
        As :func:`~cellpose_nb.normalize.to_network_input`; percentiles (and
        ``invert="auto"``'s decision) are taken over all slices at once.
    z_axis : int, optional
        The axis of the slices (default 0).
    channel_axis : int, optional
        Required for a 4-D volume.

    Examples
    --------
    >>> vol = np.random.default_rng(0).random((4, 10, 12, 2))
    >>> volume_input(vol, channels=(0, 1), channel_axis=-1).shape
    (2, 4, 10, 12)
    """
    zyxc = _volume_zyxc(volume, z_axis, channel_axis)
    z, y, x, c = zyxc.shape
    # the volume as one tall (Z * Y, X, C) image: one set of percentiles for all slices
    flat = to_network_input(zyxc.reshape(z * y, x, c), channels=channels, channel_axis=-1,
                            normalize=normalize, invert=invert)
    return flat.reshape(2, z, y, x)


def resampled_shape(shape, scale, anisotropy):
    """(Z, Y, X) of the volume the network sees, as Cellpose: ``int(Z * anisotropy * scale)``,
    ``int(Y * scale)``, ``int(X * scale)``.

    Examples
    --------
    >>> resampled_shape((10, 100, 80), 0.5, 3.0)
    (15, 50, 40)
    """
    z, y, x = shape
    return (max(1, int(z * anisotropy * scale)), max(1, int(y * scale)), max(1, int(x * scale)))


def predict_flows_3d(x, model, *, scale=1.0, anisotropy=ANISOTROPY, **run_kw):
    """The 2.5D network outputs of a (2, Z, Y, X) input: mean flows and cell probability.

    Returns
    -------
    flows : ndarray (3, Z, Y, X) of float32
        (d_z, d_row, d_col) at unit scale, each the mean of its two slice estimates;
        d_z divided by ``anisotropy`` (a step in the volume's own slices).
    cellprob : ndarray (Z, Y, X) of float32
        The mean of the three slice orientations' logits.
    style : ndarray (n_style,)
        The style of the YX slices.

    Examples
    --------
    >>> import torch
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
    >>> f, p, s = predict_flows_3d(np.zeros((2, 9, 20, 24), np.float32), net, anisotropy=2.0)
    >>> f.shape, p.shape
    ((3, 9, 20, 24), (9, 20, 24))
    """
    shape = x.shape[1:]
    small = resampled_shape(shape, scale, anisotropy)
    if min(small) < MIN_SIDE_3D:
        raise ValueError(f"the volume of shape {tuple(shape)} becomes {small} at the model's "
                         f"scale ({scale:.3g}) and anisotropy ({anisotropy:g}); every axis must "
                         f"be at least {MIN_SIDE_3D} voxels for the network's slices")
    x = _resize(np.asarray(x, np.float32), small)
    acc = np.zeros((4, *small), np.float32)  # d_z, d_row, d_col, cellprob: sums
    style = None
    # progress on a terminal or in a notebook (tqdm's own rule), slices of all orientations
    bar = tqdm(total=sum(small), desc="2.5D slices", unit="slice", disable=None, leave=False)
    for name, axis, (row_ax, col_ax) in _ORIENTATIONS:
        xs = np.moveaxis(x, axis + 1, 0)  # (n_slices, C, rows, cols), a view

        def add(k, y, axis=axis, row_ax=row_ax, col_ax=col_ax):
            index = [slice(None)] * 3
            index[axis] = k
            index = tuple(index)
            acc[row_ax][index] += y[0]
            acc[col_ax][index] += y[1]
            acc[3][index] += y[2]
            bar.update()

        s = run_net_stack(xs, model, add, **run_kw)
        style = s if name == "YX" else style
    bar.close()
    del x
    acc[:3] /= 2 * FLOW_SCALE  # two estimates per component, network scale -> unit
    acc[3] /= 3
    # d_z was a step in resampled slices: in the volume's own slices it is anisotropy times
    # shorter (Y and X keep their network length; n_iter makes up for the scale, as in 2D)
    acc[0] /= anisotropy
    acc = _resize(acc, shape)
    return acc[:3], acc[3], style


def masks_3d(flows, cellprob, *, cellprob_threshold, flow_threshold, n_iter, min_size):
    """:func:`~cellpose_nb.masks3d.compute_masks_3d` of mean 2.5D flows, followed at
    ``FLOW_GAIN_3D`` times the mean (Cellpose's sum); ``flows`` is scaled in place
    and restored.  The optional flow-error check compares the mean flows (unit
    scale, like 2D ones) with the masks' own."""
    flows *= FLOW_GAIN_3D
    try:
        labels = compute_masks_3d(flows, cellprob, cellprob_threshold=cellprob_threshold,
                                  flow_threshold=None, n_iter=n_iter, min_size=min_size)
    finally:
        flows /= FLOW_GAIN_3D
    if flow_threshold and labels.max() > 0:
        labels = remove_bad_flow_masks_3d(labels, flows, threshold=flow_threshold)
        labels = fill_holes_and_remove_small_masks_3d(labels, min_size=min_size)  # renumbered
    return labels


def segment_slices(x, model, *, scale, stitch_threshold, cellprob_threshold, flow_threshold,
                   n_iter, min_size, **run_kw):
    """Every YX slice of a (2, Z, Y, X) input segmented in 2D, then stitched by IoU.

    Returns (labels (Z, Y, X), flows (2, Z, Y, X), cellprob (Z, Y, X), style).
    Masks are not size-filtered per slice (a cell's first and last slices are
    small); ``min_size`` applies to the stitched 3D masks, as in Cellpose.
    """
    z, h, w = x.shape[1:]
    small = (max(1, int(h * scale)), max(1, int(w * scale)))
    xs = _resize(x, (z, *small))
    flows = np.empty((2, z, h, w), np.float32)
    cellprob = np.empty((z, h, w), np.float32)
    masks = np.zeros((z, h, w), np.int32)

    bar = tqdm(total=z, desc="slices", unit="slice", disable=None, leave=False)

    def add(k, y):
        bar.update()
        y = _resize(y, (h, w))
        flows[:, k] = y[:2] / FLOW_SCALE
        cellprob[k] = y[2]
        masks[k] = compute_masks(flows[:, k], cellprob[k], cellprob_threshold=cellprob_threshold,
                                 flow_threshold=flow_threshold, n_iter=n_iter, min_size=-1)

    style = run_net_stack(np.moveaxis(xs, 1, 0), model, add, **run_kw)
    bar.close()
    labels = stitch_slices(masks, stitch_threshold)
    return fill_holes_and_remove_small_masks_3d(labels, min_size=min_size), flows, cellprob, style


def segment_volume(volume, model, *, do_3d, stitch_threshold, anisotropy, z_axis,
                   channel_axis, diameter, channels, invert, cfg):
    """:func:`~cellpose_nb.predict.segment` of a volume (``do_3d`` or ``stitch_threshold``)."""
    if do_3d and stitch_threshold:
        raise ValueError("choose one way to segment a volume: do_3d=True (2.5D flows followed "
                         f"in 3D) or stitch_threshold={stitch_threshold!r} (2D slices linked by "
                         "IoU), not both")
    if not do_3d and not (np.isscalar(stitch_threshold) and 0 < float(stitch_threshold) <= 1):
        raise ValueError(f"stitch_threshold must be a number in (0, 1]; got {stitch_threshold!r}")
    aniso = _check_anisotropy(ANISOTROPY if anisotropy is None else anisotropy)
    channels, invert = input_knobs(model, channels, invert)
    x = volume_input(volume, channels=channels, z_axis=z_axis, channel_axis=channel_axis,
                     normalize=cfg.normalize, invert=invert)
    th = model_thresholds(model, cfg.cellprob_threshold, cfg.flow_threshold)
    diam_mean = float(model.config.diam_mean)
    notes = _input_notes(volume, channels, channel_axis, ndim=3, what="volume")
    size_model = _stored_size_model(model) if diameter is None else None
    if size_model is not None:  # estimated on the middle slice, as a 2D image
        diameter, _, _, estimated = _estimate_and_run(x[:, x.shape[1] // 2], model, size_model,
                                                      cfg, th)
        notes += tuple(n.replace("diameter estimated", "diameter estimated on the middle slice")
                       for n in estimated)
    elif diameter is None:
        diameter = _fallback_diameter(model, "the model has no size model", 4)
    diameter = check_diameter(diameter, x.shape[-2:], diam_mean)
    scale = diam_mean / diameter
    n_iter = n_iter_for(scale) if cfg.n_iter is None else cfg.n_iter
    run_kw = dict(tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap, augment=cfg.augment,
                  batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision)
    if do_3d:
        flows, cellprob, style = predict_flows_3d(x, model, scale=scale, anisotropy=aniso,
                                                  **run_kw)
        del x
        # no flow check in 3D unless asked for (Cellpose skips it there)
        labels = masks_3d(flows, cellprob, cellprob_threshold=th["cellprob_threshold"],
                          flow_threshold=cfg.flow_threshold, n_iter=n_iter,
                          min_size=cfg.min_size)
    else:
        if aniso != ANISOTROPY:
            notes += (f"anisotropy={aniso:g} is not used when stitching 2D slices",)
        labels, flows, cellprob, style = segment_slices(
            x, model, scale=scale, stitch_threshold=float(stitch_threshold), n_iter=n_iter,
            min_size=cfg.min_size, **th, **run_kw)
    return Segmentation(labels=labels, flows=flows, cellprob=cellprob, style=style,
                        diameter=float(diameter), notes=notes)
