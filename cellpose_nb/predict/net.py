"""The network on a whole input: blended tiles, test-time flips, precision, rescaling.

:func:`run_net` streams tiles through the network (only ``batch_size`` tiles
exist at a time; their outputs are added into one preallocated sum and
weight).  :func:`predict_flows` zooms the input by ``diam_mean / diameter``,
runs it and zooms the outputs back: segmentation and the training code
(validation, size model, threshold tuning) all go through it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.masks import CELLPROB_THRESHOLD, FLOW_THRESHOLD, N_ITER, compute_masks
from cellpose_nb.model import resolve_device
from cellpose_nb.predict._compat import _data_first
from cellpose_nb.predict.tiles import (
    PAD_MULTIPLE,
    TILE_OVERLAP,
    TILE_SIZE,
    _add_tile,
    _blend_weight,
    _read_tile,
    tile_layout,
)

__all__ = ["BATCH_SIZE", "BATCH_SIZE_CPU", "PRECISION", "PRECISIONS", "NetOutput",
           "FlowPrediction", "run_net", "run_net_stack", "predict_flows", "n_iter_for"]

BATCH_SIZE = 8  # tiles per forward pass on GPUs (Cellpose's batch_size)
BATCH_SIZE_CPU = 2  # ... and on the CPU, where small batches keep the feature maps in cache
# run_net(precision=...) -> autocast dtype; None = plain float32 (exactly Cellpose's numbers)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISION = "float32"  # the default: Cellpose's numbers


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


def _check_run_args(x, ndim, what, batch_size, tile_overlap, precision):
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"x must be {what}; got shape {x.shape}")
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"x must be non-empty and finite; got shape {x.shape} with "
                         f"{int(np.size(x) - np.isfinite(x).sum())} NaN/inf values")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if not 0 <= tile_overlap < 1:
        raise ValueError(f"tile_overlap must be a fraction in [0, 1); got {tile_overlap}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")
    return x


def run_net(x, model, *, tile_size=TILE_SIZE, tile_overlap=TILE_OVERLAP, augment=False,
            batch_size=None, device=None, precision=PRECISION):
    """Run the network on a (C, H, W) input of any size, in blended tiles.

    Parameters
    ----------
    x : ndarray (C, H, W)
        Network input, e.g. from :func:`~cellpose_nb.normalize.to_network_input`.
    model : torch.nn.Module
        ``forward(x) -> (y, style)`` as :class:`~cellpose_nb.model.CellposeUNet`;
        run in eval mode (its mode is restored afterwards).  The old order
        ``run_net(model, x)`` still works for one release, with a DeprecationWarning.
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
        batches keep the feature maps in cache (``benchmarks/inference_vs_cellpose.py``
        measures it), ``BATCH_SIZE`` (Cellpose's) elsewhere.
    device : str or torch.device, optional
        None: where the model is.  Another device runs a copy of the model
        (move the model yourself to avoid copying it on every call).
    precision : {"float32", "bfloat16", "float16"}
        "bfloat16"/"float16" run the network under ``torch.autocast``: faster
        on GPUs and on CPUs with bfloat16 units (e.g. Intel AMX); outputs
        differ slightly from float32's.  Outputs are float32 either way.

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
    >>> out = run_net(np.random.default_rng(0).random((2, 70, 90), np.float32), net, tile_size=32)
    >>> out.y.shape, out.y.dtype, out.style.shape
    ((3, 70, 90), dtype('float32'), (16,))
    """
    x, model = _data_first(x, model, func="run_net", data_name="x")
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be a (C, H, W) network input; got shape {x.shape}")
    out = []
    style = run_net_stack(x[None], model, lambda k, y: out.append(y), tile_size=tile_size,
                          tile_overlap=tile_overlap, augment=augment, batch_size=batch_size,
                          device=device, precision=precision)
    return NetOutput(y=out[0], style=style)


def run_net_stack(xs, model, on_output, *, tile_size=TILE_SIZE, tile_overlap=TILE_OVERLAP,
                  augment=False, batch_size=None, device=None, precision=PRECISION):
    """:func:`run_net` on a stack of same-sized inputs, with tiles of several inputs per batch.

    The slices of a volume are run this way (Cellpose's ``run_net`` on a stack
    does the same): small slices fill a batch together instead of one batch
    each.  Each input's output is handed to ``on_output(k, y)`` as soon as its
    last tile is done, so a caller can add it into a volume without a second
    copy of the stack's outputs.

    Parameters
    ----------
    xs : ndarray (N, C, H, W)
        N network inputs of the same size (a view into a volume is fine: tiles are copied).
    model : torch.nn.Module
    on_output : callable
        ``on_output(k, y)`` with ``y`` the (n_out, H, W) float32 output of
        ``xs[k]`` at network scale, as :func:`run_net`'s ``y``; ``y`` is new
        and may be kept.
    tile_size, tile_overlap, augment, batch_size, device, precision
        As :func:`run_net`.

    Returns
    -------
    style : ndarray (n_style,) of float32
        The style summed over every tile of every input, L2-normalised.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
    >>> xs = np.random.default_rng(0).random((3, 2, 40, 50), np.float32)
    >>> ys = {}
    >>> _ = run_net_stack(xs, net, ys.__setitem__, tile_size=32, batch_size=4)
    >>> sorted(ys), bool(np.allclose(ys[1], run_net(xs[1], net, tile_size=32).y, atol=1e-5))
    ([0, 1, 2], True)
    """
    xs = _check_run_args(xs, 4, "an (N, C, H, W) stack of network inputs", batch_size,
                         tile_overlap, precision)
    amp = PRECISIONS[precision]
    multiple = PAD_MULTIPLE
    config = getattr(model, "config", None)
    if config is not None:
        multiple = math.lcm(PAD_MULTIPLE, config.size_multiple)
    layout = tile_layout(xs.shape[2:], tile_size=tile_size, tile_overlap=tile_overlap,
                         augment=augment, multiple=multiple)
    weight_tile = _blend_weight(layout)
    per_input = [(j, i) for j in range(len(layout.rows)) for i in range(len(layout.cols))]
    tiles = [(k, j, i) for k in range(xs.shape[0]) for j, i in per_input]

    partial = {}  # k -> (sum, weight, tiles added) of the inputs in flight
    style_sum = None
    net, device = _on_device(model, device)
    if batch_size is None:
        batch_size = BATCH_SIZE_CPU if device.type == "cpu" else BATCH_SIZE
    dtype = _model_dtype(net)
    autocast = contextlib.nullcontext() if amp is None else torch.autocast(device.type, amp)
    with _evaluating(net), torch.inference_mode(), autocast:
        for start in range(0, len(tiles), int(batch_size)):
            chunk = tiles[start:start + int(batch_size)]
            batch = np.empty((len(chunk), xs.shape[1], *layout.tile), np.float32)
            places = []
            for b, (k, j, i) in enumerate(chunk):
                places.append(_read_tile(xs[k], layout, layout.rows[j], layout.cols[i], batch[b]))
                if flip := _flip_axes(layout, j, i):
                    batch[b] = np.flip(batch[b], flip)
            y, style = net(torch.from_numpy(batch).to(device, dtype))
            y = y.float().cpu().numpy()
            style = style.double().sum(0).cpu().numpy()
            style_sum = style if style_sum is None else style_sum + style
            for b, (k, j, i) in enumerate(chunk):
                if k not in partial:  # now that the number of outputs is known
                    partial[k] = [np.zeros((y.shape[1], *xs.shape[2:]), np.float32),
                                  np.zeros(xs.shape[2:], np.float32), 0]
                total, weight, _ = partial[k]
                flip = _flip_axes(layout, j, i)
                _add_tile(total, weight, _unflip(y[b], flip) if flip else y[b], places[b],
                          weight_tile)
                partial[k][2] += 1
                if partial[k][2] == len(per_input):
                    total, weight, _ = partial.pop(k)
                    total /= weight
                    on_output(k, total)
    norm = np.sqrt((style_sum ** 2).sum())
    style = style_sum / norm if norm > 0 else style_sum
    return style.astype(np.float32)


def _resize(a, shape):
    """Bilinear resize of a (C, H, W) float32 array, channel by channel (as cv2 INTER_LINEAR),
    or trilinear of a (C, Z, Y, X) one (Cellpose's YX then Z bilinear passes); ``a`` itself
    when it has that shape already."""
    shape = tuple(shape)
    if tuple(a.shape[1:]) == shape:
        return a
    mode = {2: "bilinear", 3: "trilinear"}[len(shape)]
    out = np.empty((a.shape[0], *shape), np.float32)
    for c in range(a.shape[0]):
        src = torch.from_numpy(np.ascontiguousarray(a[c], np.float32))[None, None]
        out[c] = F.interpolate(src, size=shape, mode=mode, align_corners=False)[0, 0].numpy()
    return out


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


def predict_flows(x, model, *, scale=1.0, **run_kw):
    """The network's flows and cell probability for one network input, at its own size.

    ``x`` is zoomed by ``scale`` (bilinear, to ``int(n * scale)`` pixels as
    Cellpose), run through :func:`run_net`, and the outputs are zoomed back.
    :func:`~cellpose_nb.predict.segment` and the training code (validation, size model, threshold
    tuning) all go through here, so that thresholds are tuned on the outputs
    that segmentation uses.

    Parameters
    ----------
    x : ndarray (C, H, W)
        Network input (see :func:`~cellpose_nb.normalize.to_network_input`).
    model : CellposeUNet
        The old order ``predict_flows(model, x)`` still works for one release,
        with a DeprecationWarning.
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
    >>> p = predict_flows(np.zeros((2, 40, 30), np.float32), net, scale=1.5)
    >>> p.flows.shape, p.cellprob.shape, p.style.shape
    ((2, 40, 30), (40, 30), (16,))
    """
    x, model = _data_first(x, model, func="predict_flows", data_name="x")
    x = np.asarray(x, np.float32)
    shape = x.shape[1:]
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number; got {scale!r}")
    if scale != 1.0:
        x = _resize(x, tuple(max(1, int(n * scale)) for n in shape))  # int(): as Cellpose
    net = run_net(x, model, **run_kw)
    y = net.y if scale == 1.0 else _resize(net.y, shape)
    flows = y[:2]
    flows /= FLOW_SCALE
    return FlowPrediction(flows=flows, cellprob=y[2], style=net.style)


def _masks_at_scale(x, model, *, scale, cellprob_threshold=CELLPROB_THRESHOLD,
                    flow_threshold=FLOW_THRESHOLD):
    """Labels of one (C, H, W) input zoomed by ``scale``: :func:`predict_flows`, then
    :func:`~cellpose_nb.masks.compute_masks` with ``n_iter_for(scale)`` steps, as
    :func:`~cellpose_nb.predict.segment` does (validation AP, diameter refinement)."""
    pred = predict_flows(x, model, scale=scale)
    return compute_masks(pred.flows, pred.cellprob, cellprob_threshold=cellprob_threshold,
                         flow_threshold=flow_threshold, n_iter=n_iter_for(scale))
