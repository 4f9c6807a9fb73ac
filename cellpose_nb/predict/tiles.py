"""Cellpose's tiling of a padded image: where the tiles go and how they are blended.

:func:`tile_layout` pads an image and places overlapping tiles on it;
:func:`taper_mask` is the weight that blends tile outputs (centres more than
edges).  ``_read_tile`` / ``_add_tile`` move one tile in and out of the image.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["TILE_SIZE", "TILE_OVERLAP", "TileLayout", "tile_layout", "taper_mask"]

TILE_SIZE = 224  # tile side in pixels (Cellpose's bsize)
TILE_OVERLAP = 0.1  # overlap of neighbouring tiles, as a fraction of the tile
OVERLAP_RANGE = (0.05, 0.5)  # tile_overlap is clipped to this range, as in Cellpose
PAD_MULTIPLE = 16  # the padded image is a multiple of this (transforms.get_pad_yx) ...
PAD_EXTRA = 8  # ... with this many extra zero pixels on each side (extra=1 -> 16 // 2)
TAPER_MARGIN = 20.0  # px from a tile edge where the blending weight is 1/2
TAPER_SIGMA = 7.5  # px, width of the sigmoid fall-off of the blending weight


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


class _TilePlace(NamedTuple):
    """Where a tile meets the image: ``image`` = (row start, row end, col start,
    col end) of the shared part in image coordinates, ``offset`` = its (row, col)
    inside the tile."""

    image: tuple[int, int, int, int]
    offset: tuple[int, int]


def _read_tile(x, layout, top, left, out) -> _TilePlace:
    """Copy the part of tile (top, left) that overlaps the image into ``out`` (zeros elsewhere)."""
    out[...] = 0
    h, w = x.shape[1:]
    r0, c0 = top - layout.pad[0], left - layout.pad[1]
    rs, re_ = max(r0, 0), min(r0 + layout.tile[0], h)
    cs, ce = max(c0, 0), min(c0 + layout.tile[1], w)
    if rs < re_ and cs < ce:
        out[:, rs - r0:re_ - r0, cs - c0:ce - c0] = x[:, rs:re_, cs:ce]
    return _TilePlace(image=(rs, re_, cs, ce), offset=(rs - r0, cs - c0))


def _add_tile(total, weight, out, place, weight_tile):
    """Add the part of a tile's output (C, h, w) that lies on the image, weighted."""
    (rs, re_, cs, ce), (tr, tc) = place
    h, w = re_ - rs, ce - cs
    if h > 0 and w > 0:
        wt = weight_tile[tr:tr + h, tc:tc + w]
        total[:, rs:re_, cs:ce] += out[:, tr:tr + h, tc:tc + w] * wt
        weight[rs:re_, cs:ce] += wt


def _blend_weight(layout):
    """Blending weight of every tile of ``layout``: the taper along each axis with
    more than one tile, flat along an axis with one tile (nothing to blend)."""
    profiles = [_taper_profile(t) if len(s) > 1 else np.ones(t)
                for t, s in zip(layout.tile, (layout.rows, layout.cols))]
    return np.outer(*profiles).astype(np.float32)
