"""From an image to labels in one call: :func:`segment` and :func:`segment_many`.

The knobs a model brings along are resolved here: its input recipe
(:func:`input_knobs`), its tuned thresholds, and its size model when no
diameter is given.  The network and mask knobs are a
:class:`~cellpose_nb.predict.SegmentConfig`, or keyword overrides of one.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from cellpose_nb.masks import CELLPROB_THRESHOLD, FLOW_THRESHOLD, compute_masks
from cellpose_nb.model.record import record_field
from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict.config import SegmentConfig
from cellpose_nb.predict.diameter import (
    _stored_size_model,
    check_diameter,
    median_diameter,
    style_diameter,
)
from cellpose_nb.predict.net import n_iter_for, predict_flows

__all__ = ["Segmentation", "InputKnobs", "REUSE_TOLERANCE", "segment", "segment_many",
           "input_knobs"]

DEFAULT_CHANNELS = (0, None)  # network input of a model without an input recipe
# keys read from model.record.thresholds, first match wins
THRESHOLD_KEYS = {"cellprob_threshold": ("cellprob_threshold", "cellprob"),
                  "flow_threshold": ("flow_threshold", "flow")}
#: without a given diameter, the image is segmented at the size model's guess and the
#: masks' median diameter is the estimate; that segmentation is the result when the
#: estimate is within this fraction of the guess, else the image is segmented again at it
REUSE_TOLERANCE = 0.1


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


def _input_notes(image, channels, channel_axis):
    """Notes on what the network input had to make up for (see ``Segmentation.notes``)."""
    arr = np.asarray(image)
    one_channel = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1 if channel_axis is None else channel_axis] == 1)
    if one_channel and channels[1] is not None:
        return (f"the image has one channel; the model also reads a nuclear channel "
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
    measured = median_diameter(labels)
    try:
        estimate = check_diameter(measured, shape, diam_mean) if measured > 0 else guess
    except ValueError:  # e.g. masks too small to measure: keep the guess
        estimate = guess
    note = f"diameter estimated: {estimate:.1f} px (size model's guess {guess:.1f} px"
    if abs(estimate / guess - 1) > REUSE_TOLERANCE:
        pred, labels = _run_pass(x, model, estimate, cfg, th)
        note += f"; segmented again at {estimate:.1f} px)"
    else:
        note += f", within {REUSE_TOLERANCE:.0%}: segmented once)"
    return estimate, pred, labels, (note,)


def _thresholds(model, cellprob_threshold, flow_threshold):
    tuned = record_field(model, "thresholds") or {}
    chosen = {"cellprob_threshold": cellprob_threshold, "flow_threshold": flow_threshold}
    defaults = {"cellprob_threshold": CELLPROB_THRESHOLD, "flow_threshold": FLOW_THRESHOLD}
    for name, keys in THRESHOLD_KEYS.items():
        if chosen[name] is None:
            found = [tuned[k] for k in keys if k in tuned]
            chosen[name] = found[0] if found else defaults[name]
    try:  # the model's tuned values get the same range checks as the caller's
        SegmentConfig(**chosen)
    except ValueError as exc:
        raise ValueError(f"the model's tuned thresholds {tuned}: {exc}") from None
    return {k: float(v) for k, v in chosen.items()}


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


def _config_of(config, knobs):
    """``config`` (default: ``SegmentConfig()``) with the keyword overrides ``knobs``."""
    if config is None:
        config = SegmentConfig()
    elif not isinstance(config, SegmentConfig):
        raise TypeError(f"config must be a SegmentConfig; got {type(config).__name__}")
    return config.replace(**knobs)


def segment(image, model, *, diameter=None, channels=None, channel_axis=None, invert=None,
            config=None, **knobs):
    """Segment an image (or a list of images) with a trained model.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C), or a list of them
        See :func:`~cellpose_nb.normalize.to_network_input` for ``channels``,
        ``channel_axis`` and ``invert``.
    model : CellposeUNet
        Anything with ``forward(x) -> (y, style)`` and ``config.diam_mean``.
    diameter : float, optional
        Cell diameter in pixels; the image is rescaled by ``diam_mean / diameter``.
        None: estimated when the model has a size model (``model.record.size_model``
        or one in its training record), as :func:`~cellpose_nb.predict.estimate_diameter`
        does: the size model's guess from the style, one segmentation at the guess, and
        the median diameter of its masks; that segmentation is the result when the
        estimate is within ``REUSE_TOLERANCE`` of the guess, else the image is
        segmented again at the estimate.  Without a size model: the model's
        ``diam_mean`` (no rescaling), with a warning.
    channels, channel_axis, invert
        Passed to ``to_network_input``.  ``channels=None`` and ``invert=None``
        take the model's ``input_recipe`` (see :func:`input_knobs`), e.g. the
        shipped nuclei model's ``("gray", None)`` and ``"auto"``: colour images
        are turned to gray and images with dark nuclei on a light background
        (histology, brightfield) inverted; ``(0, None)`` and ``False`` without one.
    config : SegmentConfig, optional
        The network and mask knobs (default: ``SegmentConfig()``):

        - ``normalize``: passed to ``to_network_input``;
        - ``tile_size``, ``tile_overlap``, ``augment``, ``batch_size``, ``device``,
          ``precision``: see :func:`~cellpose_nb.predict.run_net`;
        - ``cellprob_threshold``, ``flow_threshold``: None takes the model's tuned
          ``thresholds`` if it has them, else :mod:`cellpose_nb.masks`'
          ``CELLPROB_THRESHOLD`` and ``FLOW_THRESHOLD``;
        - ``min_size``, ``n_iter``: see :func:`~cellpose_nb.masks.compute_masks`.
          ``n_iter=None`` follows the flows ``200 * diameter / diam_mean`` steps, as
          Cellpose's ``eval`` does: the masks are computed at the original size,
          where cells are that much larger (or smaller) than the model's.
    **knobs
        Fields of ``config`` to override, e.g. ``augment=True``; an unknown name
        raises TypeError.

    Returns
    -------
    Segmentation, or a list of them for a list of images

    Examples
    --------
    >>> import torch
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16), diam_mean=10.0)).eval()
    >>> res = segment(np.random.default_rng(0).random((40, 50)), net, diameter=12.0)
    >>> res.labels.shape, res.labels.dtype, res.flows.shape, res.cellprob.shape, res.diameter
    ((40, 50), dtype('int32'), (2, 40, 50), (40, 50), 12.0)
    """
    cfg = _config_of(config, knobs)
    if isinstance(image, list):
        if not all(isinstance(im, np.ndarray) for im in image):
            raise TypeError("a list given as the image must hold numpy arrays, one per image; "
                            "for one image given as nested lists pass np.asarray(image)")
        return [segment(im, model, diameter=diameter, channels=channels,
                        channel_axis=channel_axis, invert=invert, config=cfg) for im in image]
    channels, invert = input_knobs(model, channels, invert)
    x = to_network_input(image, channels=channels, channel_axis=channel_axis,
                         normalize=cfg.normalize, invert=invert)
    th = _thresholds(model, cfg.cellprob_threshold, cfg.flow_threshold)
    size_model = _stored_size_model(model) if diameter is None else None
    notes = _input_notes(image, channels, channel_axis)
    if size_model is not None:
        diameter, pred, labels, estimated = _estimate_and_run(x, model, size_model, cfg, th)
        notes += estimated
    else:
        if diameter is None:
            diameter = _fallback_diameter(model, "the model has no size model (fit one with "
                                                 "cellpose_nb.train.fit_size_model)", 3)
        diameter = check_diameter(diameter, x.shape[-2:], float(model.config.diam_mean))
        pred, labels = _run_pass(x, model, diameter, cfg, th)
    return Segmentation(labels=labels, flows=pred.flows, cellprob=pred.cellprob,
                        style=pred.style, diameter=diameter, notes=notes)


def segment_many(images, model, *, progress=True, diameter=None, channels=None,
                 channel_axis=None, invert=None, config=None, **knobs):
    """:func:`segment` each image of an iterable, with a tqdm progress bar.

    Parameters
    ----------
    images : iterable of ndarray
        Images are read one at a time, so a generator over files streams them.
    model : CellposeUNet
    progress : bool
        Show the progress bar.
    diameter, channels, channel_axis, invert, config, **knobs
        As :func:`segment`, the same for every image (the knobs are checked
        before the first image is read).

    Returns
    -------
    list of Segmentation

    Examples
    --------
    >>> import torch
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16), diam_mean=10.0)).eval()
    >>> imgs = [np.random.default_rng(s).random((32, 32)) for s in range(2)]
    >>> [r.labels.shape for r in segment_many(imgs, net, diameter=10.0, progress=False)]
    [(32, 32), (32, 32)]
    """
    from tqdm.auto import tqdm

    cfg = _config_of(config, knobs)
    total = len(images) if hasattr(images, "__len__") else None
    return [segment(im, model, diameter=diameter, channels=channels, channel_axis=channel_axis,
                    invert=invert, config=cfg)
            for im in tqdm(images, total=total, desc="segment", disable=not progress)]
