"""Run a trained network on whole images: tiling, test-time augmentation, diameter.

:func:`segment` is the one-call path from an image to labels, as Cellpose's
``CellposeModel.eval``:

1. :func:`~cellpose_nb.normalize.to_network_input`: two channels, percentile-normalised;
2. rescale by ``diam_mean / diameter`` so that cells have the size the model
   was trained on (bilinear);
3. :func:`run_net`: pad, cut into overlapping tiles of ``tile_size``, run the
   network on batches of tiles, blend the tile outputs with a taper that
   weights tile centres more than tile edges (Cellpose's ``make_tiles`` /
   ``average_tiles``), optionally with flipped tiles (``augment``);
4. resize the outputs back to the original size, divide the flows by
   ``FLOW_SCALE``, and :func:`~cellpose_nb.masks.compute_masks`.

Tiles are streamed: only ``batch_size`` tiles exist at a time and their
outputs are added into one preallocated (3, H, W) sum and one (H, W) weight,
so a 4096 x 4096 image needs a few float32 copies of itself, not one per tile.
The geometry (padding, tile positions, taper) is Cellpose's, so that the same
weights give the same network outputs as ``cellpose.core.run_net``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.masks import N_ITER, compute_masks
from cellpose_nb.model import resolve_device
from cellpose_nb.normalize import to_network_input

__all__ = ["Segmentation", "NetOutput", "TileLayout", "segment", "segment_many", "run_net",
           "tile_layout", "taper_mask", "input_knobs", "predict_flows", "n_iter_for",
           "FlowPrediction"]

# --- constants, each named once (Cellpose's values) ------------------------------------
TILE_SIZE = 224  # tile side in pixels (Cellpose's bsize)
TILE_OVERLAP = 0.1  # overlap of neighbouring tiles, as a fraction of the tile
BATCH_SIZE = 8  # tiles per forward pass on GPUs (Cellpose's batch_size)
BATCH_SIZE_CPU = 2  # ... and on the CPU, where small batches stay in cache (measured)
OVERLAP_RANGE = (0.05, 0.5)  # tile_overlap is clipped to this range, as in Cellpose
PAD_MULTIPLE = 16  # the padded image is a multiple of this (transforms.get_pad_yx) ...
PAD_EXTRA = 8  # ... with this many extra zero pixels on each side (extra=1 -> 16 // 2)
TAPER_MARGIN = 20.0  # px from a tile edge where the blending weight is 1/2
TAPER_SIGMA = 7.5  # px, width of the sigmoid fall-off of the blending weight
CELLPROB_THRESHOLD = 0.0  # defaults when the model has no tuned thresholds
FLOW_THRESHOLD = 0.4
DEFAULT_CHANNELS = (0, None)  # network input of a model without an input recipe
# run_net(precision=...) -> autocast dtype; None = plain float32 (exactly Cellpose's numbers)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# keys read from model.thresholds, first match wins
THRESHOLD_KEYS = {"cellprob_threshold": ("cellprob_threshold", "cellprob"),
                  "flow_threshold": ("flow_threshold", "flow")}


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
        The cell diameter (px) used to rescale the image.
    """

    labels: np.ndarray
    flows: np.ndarray
    cellprob: np.ndarray
    style: np.ndarray
    diameter: float


class NetOutput(NamedTuple):
    """Result of :func:`run_net`: ``y`` (3, H, W) float32 raw network output
    (FLOW_SCALE * d_row, FLOW_SCALE * d_col, cellprob logit) and ``style`` (n_style,)."""

    y: np.ndarray
    style: np.ndarray


class FlowPrediction(NamedTuple):
    """Result of :func:`predict_flows`: ``flows`` (2, H, W) at unit scale,
    ``cellprob`` (H, W) logits and ``style`` (n_style,), at the input's size."""

    flows: np.ndarray
    cellprob: np.ndarray
    style: np.ndarray


class TileLayout(NamedTuple):
    """Where the tiles of one image go (all in padded coordinates).

    Attributes
    ----------
    pad : (int, int)
        Zero rows above and columns left of the image.
    shape : (int, int)
        Size of the padded image.
    tile : (int, int)
        Size of one tile.
    rows, cols : ndarray of int
        Top row and left column of the tiles; tile (j, i) starts at (rows[j], cols[i]).
    augment : bool
        Tile (j, i) is flipped up-down when i is odd and left-right when j is odd.
    """

    pad: tuple[int, int]
    shape: tuple[int, int]
    tile: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    augment: bool


# --- tiles ------------------------------------------------------------------------------
def _padding(length, multiple):
    """(before, after) zeros: to a multiple of ``multiple``, plus PAD_EXTRA each side."""
    total = -(-length // multiple) * multiple - length
    return PAD_EXTRA + total // 2, PAD_EXTRA + total - total // 2


def _starts(length, tile, n):
    return np.linspace(0, length - tile, n).astype(int)


def tile_layout(shape, *, tile_size=TILE_SIZE, tile_overlap=TILE_OVERLAP, augment=False,
                multiple=PAD_MULTIPLE):
    """Cellpose's tiling of an (H, W) image (``transforms.make_tiles`` in ``run_net``).

    The image is zero-padded to a multiple of ``multiple`` plus ``PAD_EXTRA`` on
    each side.  Without ``augment``, an axis longer than the tile gets
    ``ceil((1 + 2 * tile_overlap) * L / tile_size)`` evenly spaced tiles, a
    shorter one a single tile of its own length.  With ``augment``, tiles
    overlap by half (``tile_overlap`` is ignored), there are at least two per
    axis and the padded image is at least one tile large.

    Parameters
    ----------
    shape : (int, int)
        (H, W) of the image before padding.
    tile_size : int
        A multiple of ``multiple``.
    tile_overlap : float
        Clipped to ``OVERLAP_RANGE``.
    augment : bool
    multiple : int

    Returns
    -------
    TileLayout

    Examples
    --------
    >>> lay = tile_layout((500, 200))
    >>> lay.shape, lay.tile, lay.rows.tolist(), lay.cols.tolist()
    ((528, 224), (224, 224), [0, 152, 304], [0])
    """
    if tile_size < multiple or tile_size % multiple:
        raise ValueError(f"tile_size must be a positive multiple of {multiple}; got {tile_size}")
    pads = [_padding(int(n), multiple) for n in shape]
    padded = [n + a + b for n, (a, b) in zip(shape, pads)]
    if augment:
        padded = [max(n, tile_size) for n in padded]
        counts = [max(2, math.ceil(2.0 * n / tile_size)) for n in padded]
        tiles = [tile_size, tile_size]
    else:
        overlap = min(OVERLAP_RANGE[1], max(OVERLAP_RANGE[0], tile_overlap))
        counts = [1 if n <= tile_size else math.ceil((1.0 + 2 * overlap) * n / tile_size)
                  for n in padded]
        tiles = [min(tile_size, n) for n in padded]
    return TileLayout(pad=(pads[0][0], pads[1][0]), shape=tuple(padded), tile=tuple(tiles),
                      rows=_starts(padded[0], tiles[0], counts[0]),
                      cols=_starts(padded[1], tiles[1], counts[1]), augment=bool(augment))


def _taper_profile(length):
    dist = np.abs(np.arange(length) - (length - 1) / 2)
    return 1.0 / (1.0 + np.exp((dist - (length / 2 - TAPER_MARGIN)) / TAPER_SIGMA))


def taper_mask(shape):
    """Blending weight of a tile: ~1 in the middle, a sigmoid fall-off near the edges.

    Cellpose's ``transforms._taper_mask`` for a 224-pixel tile (weight 1/2 at
    ``TAPER_MARGIN`` px from the edge); the same pixel margins for other sizes.

    Examples
    --------
    >>> m = taper_mask((224, 224))
    >>> m.shape, round(float(m[112, 112]), 3), round(float(m[112, 0]), 3)
    ((224, 224), 1.0, 0.069)
    """
    return np.outer(_taper_profile(shape[0]), _taper_profile(shape[1])).astype(np.float32)


# --- the network ------------------------------------------------------------------------
def _model_device(model):
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _model_dtype(model):
    tensor = next(iter(model.parameters()), None)
    return tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32


@contextlib.contextmanager
def _evaluating(model):
    """Eval mode (BatchNorm running statistics) for the duration, then the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _on_device(model, device):
    """``model`` itself if it is on ``device`` (None: where it is), else a copy moved there."""
    if device is None:
        return model, _model_device(model)
    device = resolve_device(device)
    if _model_device(model) == device:
        return model, device
    return copy.deepcopy(model).to(device), device


def _read_tile(x, layout, top, left, out):
    """Copy the part of tile (top, left) that overlaps the image into ``out`` (zeros elsewhere)."""
    out[...] = 0
    h, w = x.shape[1:]
    r0, c0 = top - layout.pad[0], left - layout.pad[1]
    rs, re_ = max(r0, 0), min(r0 + layout.tile[0], h)
    cs, ce = max(c0, 0), min(c0 + layout.tile[1], w)
    if rs < re_ and cs < ce:
        out[:, rs - r0:re_ - r0, cs - c0:ce - c0] = x[:, rs:re_, cs:ce]
    return (rs, re_, cs, ce), (rs - r0, cs - c0)


def _add_tile(total, weight, out, place, weight_tile):
    """Add the part of a tile's output (C, h, w) that lies on the image, weighted."""
    (rs, re_, cs, ce), (tr, tc) = place
    h, w = re_ - rs, ce - cs
    if h > 0 and w > 0:
        wt = weight_tile[tr:tr + h, tc:tc + w]
        total[:, rs:re_, cs:ce] += out[:, tr:tr + h, tc:tc + w] * wt
        weight[rs:re_, cs:ce] += wt


def _unflip(out, flip):
    """Undo a tile flip on a (3, h, w) output: flip back and negate the flipped flow axes."""
    out = np.flip(out, flip).copy()
    for ax in flip:
        out[ax - 1] *= -1  # axis 1 (rows) -> d_row is channel 0, axis 2 -> d_col
    return out


def _flip_axes(layout, j, i):
    """Axes (of a (C, h, w) tile) flipped for tile (j, i) under Cellpose's augmentation."""
    if not layout.augment:
        return ()
    return tuple(ax for ax, odd in ((1, i % 2), (2, j % 2)) if odd)


def run_net(model, x, *, tile_size=TILE_SIZE, tile_overlap=TILE_OVERLAP, augment=False,
            batch_size=None, device=None, precision="float32"):
    """Run the network on a (C, H, W) input of any size, in blended tiles.

    Parameters
    ----------
    model : torch.nn.Module
        ``forward(x) -> (y, style)`` as :class:`~cellpose_nb.model.CellposeUNet`;
        run in eval mode (its mode is restored afterwards).
    x : ndarray (C, H, W)
        Network input, e.g. from :func:`~cellpose_nb.normalize.to_network_input`.
    tile_size : int
        Tile side in pixels, a multiple of 16.
    tile_overlap : float
        Fraction of a tile shared with each neighbour (clipped to 0.05-0.5).
    augment : bool
        Cellpose's test-time augmentation: tiles overlap by half and every
        other tile is flipped up-down, left-right or both; outputs are flipped
        back (flow signs corrected) before blending.
    batch_size : int, optional
        Tiles per forward pass.  None: ``BATCH_SIZE_CPU`` on the CPU, where small
        batches keep the feature maps in cache and ran faster per pixel
        (see ``benchmarks/inference_vs_cellpose.py``), ``BATCH_SIZE`` (8,
        Cellpose's) elsewhere.
    device : str or torch.device, optional
        None: where the model is.  Another device runs a copy of the model
        (move the model yourself to avoid copying it on every call).
    precision : {"float32", "bfloat16", "float16"}
        "bfloat16"/"float16" run the network under ``torch.autocast``: faster
        on GPUs and on CPUs with bfloat16 units (e.g. Intel AMX), outputs
        differ from float32 by about 1 %.  Outputs are float32 either way.

    Returns
    -------
    NetOutput
        ``y`` (3, H, W) float32 at network scale (FLOW_SCALE * flows, logits)
        and ``style``.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
    >>> out = run_net(net, np.random.default_rng(0).random((2, 70, 90), np.float32), tile_size=32)
    >>> out.y.shape, out.y.dtype, out.style.shape
    ((3, 70, 90), dtype('float32'), (16,))
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be a (C, H, W) network input; got shape {x.shape}")
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"x must be non-empty and finite; got shape {x.shape} with "
                         f"{int(np.size(x) - np.isfinite(x).sum())} NaN/inf values")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if not 0 <= tile_overlap < 1:
        raise ValueError(f"tile_overlap must be a fraction in [0, 1); got {tile_overlap}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")
    amp = PRECISIONS[precision]
    multiple = PAD_MULTIPLE
    config = getattr(model, "config", None)
    if config is not None:
        multiple = math.lcm(PAD_MULTIPLE, config.size_multiple)
    layout = tile_layout(x.shape[1:], tile_size=tile_size, tile_overlap=tile_overlap,
                         augment=augment, multiple=multiple)
    profiles = [_taper_profile(t) if len(s) > 1 else np.ones(t)  # one tile: nothing to blend
                for t, s in zip(layout.tile, (layout.rows, layout.cols))]
    weight_tile = np.outer(*profiles).astype(np.float32)
    tiles = [(j, i) for j in range(len(layout.rows)) for i in range(len(layout.cols))]

    total = weight = None
    style_sum = None
    net, device = _on_device(model, device)
    if batch_size is None:
        batch_size = BATCH_SIZE_CPU if device.type == "cpu" else BATCH_SIZE
    dtype = _model_dtype(net)
    autocast = contextlib.nullcontext() if amp is None else torch.autocast(device.type, amp)
    with _evaluating(net), torch.inference_mode(), autocast:
        for start in range(0, len(tiles), int(batch_size)):
            chunk = tiles[start:start + int(batch_size)]
            batch = np.empty((len(chunk), x.shape[0], *layout.tile), np.float32)
            places = []
            for b, (j, i) in enumerate(chunk):
                places.append(_read_tile(x, layout, layout.rows[j], layout.cols[i], batch[b]))
                if flip := _flip_axes(layout, j, i):
                    batch[b] = np.flip(batch[b], flip)
            y, style = net(torch.from_numpy(batch).to(device, dtype))
            y = y.float().cpu().numpy()
            style = style.double().sum(0).cpu().numpy()
            style_sum = style if style_sum is None else style_sum + style
            if total is None:  # now that the number of outputs is known
                total = np.zeros((y.shape[1], *x.shape[1:]), np.float32)
                weight = np.zeros(x.shape[1:], np.float32)
            for b, (j, i) in enumerate(chunk):
                flip = _flip_axes(layout, j, i)
                _add_tile(total, weight, _unflip(y[b], flip) if flip else y[b], places[b],
                          weight_tile)
    total /= weight
    norm = np.sqrt((style_sum ** 2).sum())
    style = style_sum / norm if norm > 0 else style_sum
    return NetOutput(y=total, style=style.astype(np.float32))


# --- diameter, thresholds, resizing -----------------------------------------------------
def _resolve_diameter(model, x, diameter):
    if diameter is not None:
        d = float(diameter)
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"diameter must be a positive number of pixels (or None to "
                             f"estimate it); got {diameter!r}")
        return d
    diam_mean = float(model.config.diam_mean)
    try:
        from cellpose_nb.train import estimate_diameter
    except ImportError as err:
        reason = f"cellpose_nb.train.estimate_diameter is not available ({err})"
    else:
        try:
            d = estimate_diameter(model, x)
        except (FileNotFoundError, LookupError, AttributeError, ValueError) as err:
            reason = f"the size model could not estimate it ({type(err).__name__}: {err})"
        else:
            d = float(getattr(d, "diameter", d))
            if math.isfinite(d) and d > 0:
                return d
            reason = f"the size model returned {d}"
    warnings.warn(f"diameter=None: {reason}; using the model's diam_mean = {diam_mean:g} px. "
                  "Pass diameter= to set the cell size.", UserWarning, stacklevel=3)
    return diam_mean


def _thresholds(model, cellprob_threshold, flow_threshold):
    tuned = getattr(model, "thresholds", None) or {}
    chosen = {"cellprob_threshold": cellprob_threshold, "flow_threshold": flow_threshold}
    defaults = {"cellprob_threshold": CELLPROB_THRESHOLD, "flow_threshold": FLOW_THRESHOLD}
    for name, keys in THRESHOLD_KEYS.items():
        if chosen[name] is None:
            found = [tuned[k] for k in keys if k in tuned]
            chosen[name] = float(found[0]) if found else defaults[name]
    return chosen


def _resize(a, shape):
    """Bilinear resize of a (C, H, W) float32 array, channel by channel (as cv2 INTER_LINEAR)."""
    out = np.empty((a.shape[0], *shape), np.float32)
    for c in range(a.shape[0]):
        src = torch.from_numpy(np.ascontiguousarray(a[c], np.float32))[None, None]
        out[c] = F.interpolate(src, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    return out


# --- segmentation -----------------------------------------------------------------------
def input_knobs(model, channels=None, invert=None):
    """``channels`` and ``invert`` for :func:`segment`: the caller's, else the model's recipe.

    A model trained by :func:`cellpose_nb.train.train_folder` remembers how its
    training images became network input (``model.input_recipe``, saved as
    ``input.json``); without one the defaults are ``(0, None)`` and ``False``.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> net = CellposeUNet(ModelConfig(features=(4, 8)))
    >>> input_knobs(net)
    ((0, None), False)
    >>> net.input_recipe = {"channels": ["gray", None], "invert": "auto"}
    >>> input_knobs(net), input_knobs(net, channels=(1, 0), invert=False)
    ((('gray', None), 'auto'), ((1, 0), False))
    """
    recipe = getattr(model, "input_recipe", None) or {}
    if channels is None:
        channels = tuple(recipe.get("channels", DEFAULT_CHANNELS))
    if invert is None:
        invert = recipe.get("invert", False)
    return tuple(channels), invert


def segment(image, model, *, diameter=None, channels=None, channel_axis=None,
            invert=None, normalize=True, tile_size=TILE_SIZE, tile_overlap=TILE_OVERLAP,
            augment=False, cellprob_threshold=None, flow_threshold=None, min_size=15,
            n_iter=None, batch_size=None, device=None, precision="float32"):
    """Segment an image (or a list of images) with a trained model.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C), or a list of them
        See :func:`~cellpose_nb.normalize.to_network_input` for ``channels``,
        ``channel_axis``, ``invert`` and ``normalize``.
    model : CellposeUNet
        Anything with ``forward(x) -> (y, style)`` and ``config.diam_mean``.
    diameter : float, optional
        Cell diameter in pixels; the image is rescaled by ``diam_mean / diameter``.
        None: estimated by ``cellpose_nb.train.estimate_diameter`` when that is
        available, else the model's ``diam_mean`` (no rescaling) with a warning.
    channels, channel_axis, invert, normalize
        Passed to ``to_network_input``.  ``channels=None`` and ``invert=None``
        take the model's ``input_recipe`` (see :func:`input_knobs`), e.g. the
        shipped nuclei model's ``("gray", None)`` and ``"auto"``: colour images
        are turned to gray and images with dark nuclei on a light background
        (histology, brightfield) inverted; ``(0, None)`` and ``False`` without one.
    tile_size, tile_overlap, augment, batch_size, device, precision
        See :func:`run_net`.
    cellprob_threshold, flow_threshold : float, optional
        None: the model's tuned ``thresholds`` if it has them, else 0.0 and 0.4.
    min_size, n_iter
        See :func:`~cellpose_nb.masks.compute_masks`.  ``n_iter=None`` follows the
        flows ``200 * diameter / diam_mean`` steps, as Cellpose's ``eval`` does:
        the masks are computed at the original size, where cells are that much
        larger (or smaller) than the model's.

    Returns
    -------
    Segmentation, or a list of them for a list of images

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16), diam_mean=10.0)).eval()
    >>> res = segment(np.random.default_rng(0).random((40, 50)), net, diameter=12.0)
    >>> res.labels.shape, res.labels.dtype, res.flows.shape, res.cellprob.shape, res.diameter
    ((40, 50), dtype('int32'), (2, 40, 50), (40, 50), 12.0)
    """
    knobs = dict(diameter=diameter, channels=channels, channel_axis=channel_axis,
                 invert=invert, normalize=normalize, tile_size=tile_size,
                 tile_overlap=tile_overlap, augment=augment,
                 cellprob_threshold=cellprob_threshold, flow_threshold=flow_threshold,
                 min_size=min_size, n_iter=n_iter, batch_size=batch_size, device=device,
                 precision=precision)
    if isinstance(image, list):
        return [segment(im, model, **knobs) for im in image]
    channels, invert = input_knobs(model, channels, invert)
    x = to_network_input(image, channels=channels, channel_axis=channel_axis,
                         normalize=normalize, invert=invert)
    diameter = _resolve_diameter(model, x, diameter)
    scale = float(model.config.diam_mean) / diameter
    pred = predict_flows(model, x, scale=scale, tile_size=tile_size, tile_overlap=tile_overlap,
                         augment=augment, batch_size=batch_size, device=device,
                         precision=precision)
    del x
    th = _thresholds(model, cellprob_threshold, flow_threshold)
    if n_iter is None:
        n_iter = n_iter_for(scale)
    labels = compute_masks(pred.flows, pred.cellprob, **th, n_iter=n_iter, min_size=min_size)
    return Segmentation(labels=labels, flows=pred.flows, cellprob=pred.cellprob,
                        style=pred.style, diameter=diameter)


def n_iter_for(scale):
    """Flow-following steps at the original size: ``N_ITER / scale`` (Cellpose's
    ``np.uint32(200 / rescale)``), because cells there are ``1 / scale`` times the
    size the network saw.

    Examples
    --------
    >>> n_iter_for(1.0), n_iter_for(0.5), n_iter_for(2.0)
    (200, 400, 100)
    """
    return max(1, int(N_ITER / scale))


def predict_flows(model, x, *, scale=1.0, **run_kw):
    """The network's flows and cell probability for one network input, at its own size.

    ``x`` is zoomed by ``scale`` (bilinear, to ``int(n * scale)`` pixels as
    Cellpose), run through :func:`run_net`, and the outputs are zoomed back.
    :func:`segment` and the training code (validation, size model, threshold
    tuning) all go through here, so that thresholds are tuned on the outputs
    that segmentation uses.

    Parameters
    ----------
    model : CellposeUNet
    x : ndarray (C, H, W)
        Network input (see :func:`~cellpose_nb.normalize.to_network_input`).
    scale : float
        ``diam_mean / diameter``.
    **run_kw
        Keyword arguments of :func:`run_net` (tiling, batch, device, precision).

    Returns
    -------
    FlowPrediction
        ``flows`` (2, H, W) at unit scale, ``cellprob`` (H, W) logits, ``style``.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
    >>> p = predict_flows(net, np.zeros((2, 40, 30), np.float32), scale=1.5)
    >>> p.flows.shape, p.cellprob.shape, p.style.shape
    ((2, 40, 30), (40, 30), (16,))
    """
    x = np.asarray(x, np.float32)
    shape = x.shape[1:]
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number; got {scale!r}")
    if scale != 1.0:
        x = _resize(x, tuple(max(1, int(n * scale)) for n in shape))  # int(): as Cellpose
    net = run_net(model, x, **run_kw)
    y = net.y if scale == 1.0 else _resize(net.y, shape)
    flows = y[:2]
    flows /= FLOW_SCALE
    return FlowPrediction(flows=flows, cellprob=y[2], style=net.style)


def segment_many(images, model, *, progress=True, **knobs):
    """:func:`segment` each image of an iterable, with a tqdm progress bar.

    Parameters
    ----------
    images : iterable of ndarray
        Images are read one at a time, so a generator over files streams them.
    model : CellposeUNet
    progress : bool
        Show the progress bar.
    **knobs
        Keyword arguments of :func:`segment`.

    Returns
    -------
    list of Segmentation

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16), diam_mean=10.0)).eval()
    >>> imgs = [np.random.default_rng(s).random((32, 32)) for s in range(2)]
    >>> [r.labels.shape for r in segment_many(imgs, net, diameter=10.0, progress=False)]
    [(32, 32), (32, 32)]
    """
    from tqdm.auto import tqdm

    total = len(images) if hasattr(images, "__len__") else None
    return [segment(im, model, **knobs)
            for im in tqdm(images, total=total, desc="segment", disable=not progress)]
