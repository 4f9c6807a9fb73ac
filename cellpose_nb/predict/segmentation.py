"""From an image to labels in one call: :func:`segment` and :func:`segment_many`.

The knobs a model brings along (its input recipe, its tuned thresholds, its
size model when no diameter is given) are resolved by :mod:`.passes`; volumes
go to :mod:`.volume`.  The network and mask knobs are a
:class:`~cellpose_nb.predict.SegmentConfig`, or keyword overrides of one.
"""

from __future__ import annotations

import numpy as np

from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict.config import SegmentConfig, model_thresholds
from cellpose_nb.predict.diameter import _stored_size_model, check_diameter
from cellpose_nb.predict.passes import (
    REUSE_TOLERANCE,
    InputKnobs,
    Segmentation,
    _estimate_and_run,
    _fallback_diameter,
    _input_notes,
    _run_pass,
    input_knobs,
)
from cellpose_nb.predict.volume import segment_volume

__all__ = ["Segmentation", "InputKnobs", "REUSE_TOLERANCE", "segment", "segment_many",
           "input_knobs"]


def _config_of(config, knobs):
    """``config`` (default: ``SegmentConfig()``) with the keyword overrides ``knobs``."""
    if config is None:
        config = SegmentConfig()
    elif not isinstance(config, SegmentConfig):
        raise TypeError(f"config must be a SegmentConfig; got {type(config).__name__}")
    return config.replace(**knobs)


def segment(image, model, *, diameter=None, channels=None, channel_axis=None, invert=None,
            do_3d=False, anisotropy=None, z_axis=None, stitch_threshold=None, config=None,
            **knobs):
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
    do_3d : bool
        ``image`` is a volume (Z, Y, X), or 4-D with ``channel_axis``: Cellpose's
        2.5D segmentation (see :mod:`cellpose_nb.predict.volume`).  Returns
        (Z, Y, X) labels, (3, Z, Y, X) flows and (Z, Y, X) cell probabilities.
        The flow check is off unless ``flow_threshold`` is given, as in Cellpose.
    anisotropy : float, optional
        With ``do_3d``: the Z step over the XY pixel size (e.g. 2.0 for 0.5 um
        pixels and 1 um slices); Z is resampled by it.  Default 1.
    z_axis : int, optional
        The slice axis of a volume (default 0).
    stitch_threshold : float, optional
        ``image`` is a volume: segment every YX slice in 2D and link masks of
        consecutive slices with IoU >= ``stitch_threshold`` (Cellpose's
        ``stitch_threshold``; e.g. 0.25).  Flows are then (2, Z, Y, X).
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
                        channel_axis=channel_axis, invert=invert, do_3d=do_3d,
                        anisotropy=anisotropy, z_axis=z_axis, stitch_threshold=stitch_threshold,
                        config=cfg) for im in image]
    if do_3d or stitch_threshold is not None:
        return segment_volume(image, model, do_3d=bool(do_3d), stitch_threshold=stitch_threshold,
                              anisotropy=anisotropy, z_axis=z_axis, channel_axis=channel_axis,
                              diameter=diameter, channels=channels, invert=invert, cfg=cfg)
    if anisotropy is not None or z_axis is not None:
        raise ValueError("anisotropy= and z_axis= are for volumes: pass do_3d=True (2.5D) or "
                         "stitch_threshold= (2D slices linked by IoU)")
    channels, invert = input_knobs(model, channels, invert)
    x = to_network_input(image, channels=channels, channel_axis=channel_axis,
                         normalize=cfg.normalize, invert=invert)
    th = model_thresholds(model, cfg.cellprob_threshold, cfg.flow_threshold)
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
