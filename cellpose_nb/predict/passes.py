"""What 2D and volume segmentation are built from: the result, the model's knobs, the passes.

* :class:`Segmentation`, the result of :func:`~cellpose_nb.predict.segment`;
* the knobs a model brings along: its input recipe (:func:`input_knobs`) and
  its tuned thresholds;
* one network pass at a diameter and the masks of its output, and the
  diameter's estimate when none is given (the size model's guess, one pass at
  it, the masks' median diameter).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from cellpose_nb.masks import compute_masks
from cellpose_nb.model.record import record_field
from cellpose_nb.predict.diameter import check_diameter, median_diameter, style_diameter
from cellpose_nb.predict.net import n_iter_for, predict_flows

__all__ = ["Segmentation", "InputKnobs", "input_knobs", "DEFAULT_CHANNELS", "REUSE_TOLERANCE"]

DEFAULT_CHANNELS = (0, None)  # network input of a model without an input recipe
#: without a given diameter, the image is segmented at the size model's guess and the
#: masks' median diameter is the estimate; that segmentation is the result when the
#: estimate is within this fraction of the guess, else the image is segmented again at it
#: (0.4: the largest tolerance at which both shipped models' AP was unchanged, within 0.005,
#: on their validation images zoomed 0.5-2x; benchmarks/README.md, "Reuse tolerance sweep")
REUSE_TOLERANCE = 0.4


class Segmentation(NamedTuple):
    """Result of :func:`segment`, everything at the original image size.

    Attributes
    ----------
    labels : ndarray (H, W) of int32
        0 = background, 1..N = cells.
    flows : ndarray (2, H, W) of float32
        Predicted (d_row, d_col) at unit scale (network output / FLOW_SCALE).
    cellprob : ndarray (H, W) of float32
        Predicted cell-probability logits.
    style : ndarray (n_style,) of float32
        Style vector, summed over tiles and L2-normalised.
    diameter : float
        The cell diameter (px): the one given, or the estimate (the network ran
        at the size model's guess when the estimate was within
        ``REUSE_TOLERANCE`` of it; ``notes`` says which).
    notes : tuple of str
        What the input lacked and how it was handled, e.g. a one-channel image
        given to a model that also reads a nuclear channel (that channel is
        then zeros, as in Cellpose), or the diameter's estimate.
    """

    labels: np.ndarray
    flows: np.ndarray
    cellprob: np.ndarray
    style: np.ndarray
    diameter: float
    notes: tuple = ()


def _input_notes(image, channels, channel_axis, *, ndim=2, what="image"):
    """Notes on what the network input had to make up for (see ``Segmentation.notes``):
    an ``ndim``-D image (or volume) of one channel given to a model that also reads nuclei."""
    arr = np.asarray(image)
    one_channel = arr.ndim == ndim or (
        arr.ndim == ndim + 1 and arr.shape[-1 if channel_axis is None else channel_axis] == 1)
    if one_channel and channels[1] is not None:
        return (f"the {what} has one channel; the model also reads a nuclear channel "
                f"(channels={tuple(channels)}), which is zeros here, as in Cellpose",)
    return ()


def _fallback_diameter(model, reason, stacklevel):
    """The model's diam_mean, with a warning naming why the diameter is not estimated."""
    diam_mean = float(model.config.diam_mean)
    warnings.warn(f"diameter=None: {reason}; using the model's diam_mean = {diam_mean:g} px. "
                  "Pass diameter= to set the cell size.", UserWarning, stacklevel=stacklevel)
    return diam_mean


def _run_pass(x, model, diameter, cfg, th):
    """The network at ``diameter`` and the masks of its output: (FlowPrediction, labels)."""
    scale = float(model.config.diam_mean) / diameter
    pred = predict_flows(x, model, scale=scale, tile_size=cfg.tile_size,
                         tile_overlap=cfg.tile_overlap, augment=cfg.augment,
                         batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision)
    n_iter = n_iter_for(scale) if cfg.n_iter is None else cfg.n_iter
    return pred, compute_masks(pred.flows, pred.cellprob, **th, n_iter=n_iter,
                               min_size=cfg.min_size)


def estimate_from_masks(labels, guess, shape, diam_mean) -> float:
    """The diameter estimate from the masks found at ``guess``: their median diameter,
    or the guess when there are none or they cannot be used for an image of ``shape``."""
    measured = median_diameter(labels)
    try:
        return check_diameter(measured, shape, diam_mean) if measured > 0 else guess
    except ValueError:  # e.g. masks too small to measure: keep the guess
        return guess


def segments_again(estimate, guess, tolerance=REUSE_TOLERANCE) -> bool:
    """Whether ``segment`` runs a second pass at ``estimate`` after the pass at ``guess``."""
    return abs(estimate / guess - 1) > tolerance


def _estimate_and_run(x, model, size_model, cfg, th):
    """Segment without a diameter: the size model's guess, one pass at it, the masks'
    median diameter as the estimate, and a second pass only when the estimate is more
    than REUSE_TOLERANCE from the guess.  Returns (diameter, pred, labels, notes)."""
    shape, diam_mean = x.shape[-2:], float(model.config.diam_mean)
    guess = style_diameter(x, model, size_model, tile_size=cfg.tile_size,
                           tile_overlap=cfg.tile_overlap, batch_size=cfg.batch_size,
                           device=cfg.device, precision=cfg.precision)
    try:
        guess = check_diameter(guess, shape, diam_mean)
    except ValueError as exc:
        d = _fallback_diameter(model, f"the size model's estimate cannot be used: {exc}", 4)
        return (d, *_run_pass(x, model, d, cfg, th), ())
    pred, labels = _run_pass(x, model, guess, cfg, th)
    estimate = estimate_from_masks(labels, guess, shape, diam_mean)
    note = f"diameter estimated: {estimate:.1f} px (size model's guess {guess:.1f} px"
    if segments_again(estimate, guess):
        pred, labels = _run_pass(x, model, estimate, cfg, th)
        note += f"; segmented again at {estimate:.1f} px)"
    else:
        note += f", within {REUSE_TOLERANCE:.0%}: segmented once)"
    return estimate, pred, labels, (note,)


class InputKnobs(NamedTuple):
    """Result of :func:`input_knobs`: how an image becomes network input.

    Attributes
    ----------
    channels : tuple
        ``channels`` of :func:`~cellpose_nb.normalize.to_network_input`.
    invert : bool or "auto"
        ``invert`` of :func:`~cellpose_nb.normalize.to_network_input`.
    """

    channels: tuple
    invert: bool | str


def input_knobs(model, channels=None, invert=None) -> InputKnobs:
    """``channels`` and ``invert`` for :func:`segment`: the caller's, else the model's recipe.

    A model trained by :func:`cellpose_nb.train.train_folder` remembers how its
    training images became network input (``model.record.input_recipe``, saved as
    ``input.json``); without one the defaults are ``(0, None)`` and ``False``.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> net = CellposeUNet(ModelConfig(features=(4, 8)))
    >>> input_knobs(net)
    InputKnobs(channels=(0, None), invert=False)
    >>> net.record = net.record.replace(input_recipe={"channels": ["gray", None], "invert": "auto"})
    >>> channels, invert = input_knobs(net)
    >>> (channels, invert), tuple(input_knobs(net, channels=(1, 0), invert=False))
    ((('gray', None), 'auto'), ((1, 0), False))
    """
    recipe = record_field(model, "input_recipe") or {}
    if channels is None:
        channels = tuple(recipe.get("channels", DEFAULT_CHANNELS))
    if invert is None:
        invert = recipe.get("invert", False)
    return InputKnobs(tuple(channels), invert)
