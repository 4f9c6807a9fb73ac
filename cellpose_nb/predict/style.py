"""The style vector of an image, cheaply: the encoder alone on a few of its tiles.

The size model reads the cells' diameter off the style vector (see
:mod:`cellpose_nb.predict.diameter`).  :func:`run_net` computes the style
on every tile and through the whole network; the diameter estimate needs
neither: :func:`predict_style` runs only the encoder
(:meth:`~cellpose_nb.model.CellposeUNet.encode_style`) on at most
``STYLE_GRID x STYLE_GRID`` tiles of the same tiling, spread over the
image.  When the image has no more tiles than that, the result equals
``run_net(x, model).style``.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from cellpose_nb.predict.net import (
    BATCH_SIZE,
    BATCH_SIZE_CPU,
    PRECISION,
    PRECISIONS,
    _evaluating,
    _model_dtype,
    _on_device,
)
from cellpose_nb.predict.tiles import PAD_MULTIPLE, TILE_OVERLAP, TILE_SIZE, _read_tile, tile_layout

__all__ = ["STYLE_GRID", "STYLE_QUANTILES", "predict_style", "style_tiles"]

STYLE_GRID = 2  # the style is computed on at most STYLE_GRID tiles along each axis ...
STYLE_QUANTILES = (0.25, 0.75)  # ... at these fractions of the tile grid (inner tiles first)


def style_tiles(n_tiles, grid=STYLE_GRID):
    """Indices of the tiles (along one axis of ``n_tiles``) that the style is computed on.

    All of them when there are at most ``grid``; else ``grid`` of them, spread
    evenly between the first and last quartile of the row (inner tiles see
    cells, edge tiles partly padding).

    Examples
    --------
    >>> style_tiles(1), style_tiles(2), style_tiles(3), style_tiles(5), style_tiles(9)
    ([0], [0, 1], [1, 2], [1, 3], [2, 6])
    """
    if n_tiles <= grid:
        return list(range(n_tiles))
    fractions = np.linspace(*STYLE_QUANTILES, grid)
    return sorted({int(math.floor((n_tiles - 1) * q + 0.5)) for q in fractions})


def _encode_style(net, batch):
    """The (B, S) styles of a batch: the encoder alone when the network offers it."""
    encode = getattr(net, "encode_style", None)
    return encode(batch) if encode is not None else net(batch)[1]


def predict_style(x, model, *, grid=STYLE_GRID, tile_size=TILE_SIZE, tile_overlap=TILE_OVERLAP,
                  batch_size=None, device=None, precision=PRECISION):
    """The unit style vector of a (C, H, W) network input, from a few tiles.

    Parameters
    ----------
    x : ndarray (C, H, W)
        Network input at the scale the style is wanted (the size model's:
        the image as it is).
    model : CellposeUNet
        Or anything with ``forward(x) -> (y, style)``.
    grid : int
        At most ``grid`` tiles along each axis (see :func:`style_tiles`);
        None: every tile, as :func:`~cellpose_nb.predict.run_net`.
    tile_size, tile_overlap, batch_size, device, precision
        As :func:`~cellpose_nb.predict.run_net`.

    Returns
    -------
    ndarray (S,) of float32
        The sum of the tiles' styles, L2-normalised (zeros if it is zero).

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> from cellpose_nb.predict import run_net
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
    >>> x = np.random.default_rng(0).random((2, 60, 60), np.float32)
    >>> style = predict_style(x, net, tile_size=32)    # 3 x 3 tiles: 2 x 2 of them
    >>> bool(np.allclose(predict_style(x, net, tile_size=32, grid=None),
    ...                  run_net(x, net, tile_size=32).style, atol=1e-6))
    True
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"x must be a finite, non-empty (C, H, W) network input; got shape {x.shape}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")
    config = getattr(model, "config", None)
    multiple = math.lcm(PAD_MULTIPLE, config.size_multiple) if config is not None else PAD_MULTIPLE
    layout = tile_layout(x.shape[1:], tile_size=tile_size, tile_overlap=tile_overlap,
                         multiple=multiple)
    pick = (range(len(layout.rows)), range(len(layout.cols))) if grid is None else (
        style_tiles(len(layout.rows), grid), style_tiles(len(layout.cols), grid))
    tiles = [(j, i) for j in pick[0] for i in pick[1]]
    net, device = _on_device(model, device)
    if batch_size is None:
        batch_size = BATCH_SIZE_CPU if device.type == "cpu" else BATCH_SIZE
    amp = PRECISIONS[precision]
    autocast = contextlib.nullcontext() if amp is None else torch.autocast(device.type, amp)
    total = None
    with _evaluating(net), torch.inference_mode(), autocast:
        for start in range(0, len(tiles), int(batch_size)):
            chunk = tiles[start:start + int(batch_size)]
            batch = np.empty((len(chunk), x.shape[0], *layout.tile), np.float32)
            for b, (j, i) in enumerate(chunk):
                _read_tile(x, layout, layout.rows[j], layout.cols[i], batch[b])
            styles = _encode_style(net, torch.from_numpy(batch).to(device, _model_dtype(net)))
            part = styles.double().sum(0).cpu().numpy()
            total = part if total is None else total + part
    norm = np.sqrt((total ** 2).sum())
    return (total / norm if norm > 0 else total).astype(np.float32)
