"""The block grid of a large image: cores that tile it, and cores grown by a halo.

A large image is cut into a grid of *cores* of ``block_size`` pixels (the last
row and column of cores take what is left, so the size need not divide the
image).  Each core is segmented together with a *halo* of ``halo`` pixels on
every side (clipped at the image border): its *extended region*.  The halo
gives the network the context around the core, and it is where two
neighbouring blocks both have masks, so that a cell cut by a core boundary can
be recognised as one cell (:mod:`cellpose_nb.distributed.stitch`).

The halo is sized from the cell diameter: ``HALO_DIAMETERS`` diameters.  A cell
that touches a core is then wholly inside that block's extended region when it
is smaller than the halo, and the two views of it that stitching compares are
both complete.

Pure Python and NumPy: no dask, no torch.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

__all__ = [
    "BLOCK_SIZE",
    "HALO_DIAMETERS",
    "Block",
    "block_grid",
    "grid_shape",
    "grid_step",
    "halo_for",
    "neighbour_pairs",
    "shared_region",
    "within",
]

#: halo width, in cell diameters (cellpose's contrib script: 2, but its halo is discarded)
HALO_DIAMETERS = 2.0
#: default core side in pixels: a few hundred cells of 30 px, about 100 MB of float32 work
BLOCK_SIZE = 1024


class Block(NamedTuple):
    """One block of a :func:`block_grid`.

    Attributes
    ----------
    index : (int, int)
        (row, col) of the block in the grid.
    core : (slice, slice)
        The pixels this block writes, in image coordinates.
    ext : (slice, slice)
        The core grown by the halo and clipped to the image: what is read and segmented.
    """

    index: tuple
    core: tuple
    ext: tuple

    @property
    def core_in_ext(self) -> tuple:
        """The core as slices of the extended region."""
        return tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(self.core, self.ext))

    @property
    def ext_shape(self) -> tuple:
        return tuple(e.stop - e.start for e in self.ext)


def _pair(value, name):
    try:
        vals = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    except TypeError:
        vals = ()
    if len(vals) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 for v in vals):
        raise TypeError(f"{name} must be an integer or a pair of integers; got {value!r}")
    return tuple(int(v) for v in vals)


def halo_for(diameter, *, diameters=HALO_DIAMETERS, multiple=1) -> int:
    """The halo width in pixels for cells of ``diameter`` pixels, rounded up to a ``multiple``.

    ``multiple`` keeps the extended regions on the network's pixel grid: when a
    block's first pixel falls where a 16-pixel step of the rescaled whole image
    would, the block's network outputs are those of the whole image (see
    :func:`grid_step`).

    Examples
    --------
    >>> halo_for(17.0), halo_for(30), halo_for(34, multiple=32)
    (34, 60, 96)
    """
    if not (isinstance(diameter, numbers.Real) and math.isfinite(diameter) and diameter > 0):
        raise ValueError(f"diameter must be a positive number of pixels; got {diameter!r}")
    if not (isinstance(multiple, numbers.Integral) and multiple >= 1):
        raise ValueError(f"multiple must be an integer >= 1; got {multiple!r}")
    halo = math.ceil(diameters * float(diameter))
    return -(-halo // multiple) * multiple


def grid_step(diameter, diam_mean, pad_multiple) -> int:
    """Image pixels per ``pad_multiple`` network pixels, when that is a whole number, else 1.

    The network sees the image rescaled by ``diam_mean / diameter`` and is
    translation-equivariant for shifts of ``pad_multiple`` (16) network pixels.
    Blocks whose extended regions start on multiples of this step therefore
    get the same network outputs as the whole image would, up to rounding.

    Examples
    --------
    >>> grid_step(34.0, 17.0, 16), grid_step(30.0, 17.0, 16)
    (32, 1)
    """
    step = pad_multiple * float(diameter) / float(diam_mean)
    return round(step) if round(step) >= 1 and abs(step - round(step)) < 1e-9 else 1


def block_grid(shape, block_size=BLOCK_SIZE, halo=0) -> list[Block]:
    """Cut an image of ``shape`` (rows, cols) into cores of ``block_size`` with a ``halo``.

    Parameters
    ----------
    shape : (int, int)
        Rows and columns of the image.
    block_size : int or (int, int)
        Core side(s) in pixels; the last row/column of cores is smaller when it
        does not divide the image.
    halo : int or (int, int)
        Pixels added on each side of a core (clipped to the image).

    Returns
    -------
    list of Block
        In row-major order of their ``index``.

    Examples
    --------
    >>> grid = block_grid((10, 7), 4, halo=1)
    >>> len(grid), grid[-1].index, grid[-1].core, grid[-1].ext
    (6, (2, 1), (slice(8, 10, None), slice(4, 7, None)), (slice(7, 10, None), slice(3, 7, None)))
    >>> grid[0].core_in_ext
    (slice(0, 4, None), slice(0, 4, None))
    """
    rows, cols = _pair(shape, "shape")
    (bh, bw), (hh, hw) = _pair(block_size, "block_size"), _pair(halo, "halo")
    if rows < 1 or cols < 1:
        raise ValueError(f"shape must be positive; got {shape!r}")
    if bh < 1 or bw < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size!r}")
    if hh < 0 or hw < 0:
        raise ValueError(f"halo must be >= 0; got {halo!r}")
    out = []
    for i, r0 in enumerate(range(0, rows, bh)):
        for j, c0 in enumerate(range(0, cols, bw)):
            r1, c1 = min(r0 + bh, rows), min(c0 + bw, cols)
            core = (slice(r0, r1), slice(c0, c1))
            ext = (slice(max(r0 - hh, 0), min(r1 + hh, rows)), slice(max(c0 - hw, 0), min(c1 + hw, cols)))
            out.append(Block((i, j), core, ext))
    return out


def grid_shape(blocks) -> tuple:
    """(rows, cols) of blocks in a grid.

    Examples
    --------
    >>> grid_shape(block_grid((10, 7), 4))
    (3, 2)
    """
    return (max(b.index[0] for b in blocks) + 1, max(b.index[1] for b in blocks) + 1)


def neighbour_pairs(blocks):
    """Pairs (a, b) of positions in ``blocks`` whose extended regions overlap, each once.

    The right, lower, lower-right and lower-left neighbours of every block:
    the cells at a corner of four blocks are matched across every pair.

    Examples
    --------
    >>> sorted(neighbour_pairs(block_grid((8, 8), 4, halo=1)))
    [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    """
    where = {b.index: k for k, b in enumerate(blocks)}
    out = []
    for k, b in enumerate(blocks):
        i, j = b.index
        for di, dj in ((0, 1), (1, -1), (1, 0), (1, 1)):
            other = where.get((i + di, j + dj))
            if other is not None and shared_region(b, blocks[other]) is not None:  # noqa: SIM102
                out.append((k, other))
    return out


def shared_region(a: Block, b: Block):
    """The image region that the extended regions of ``a`` and ``b`` share, or None.

    Examples
    --------
    >>> a, b = block_grid((4, 8), 4, halo=1)
    >>> shared_region(a, b)
    (slice(0, 4, None), slice(3, 5, None))
    """
    region = []
    for sa, sb in zip(a.ext, b.ext):
        lo, hi = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if hi <= lo:
            return None
        region.append(slice(lo, hi))
    return tuple(region)


def match_region(a: Block, b: Block, margin):
    """Where the labels of ``a`` and ``b`` are compared: both cores grown by ``margin``, intersected.

    Half a halo from the core boundary, both blocks are at least half a halo
    from the edge of what they segmented, where masks are least reliable; a
    cell crossing the boundary that is smaller than ``margin`` lies wholly inside.

    Examples
    --------
    >>> a, b = block_grid((4, 8), 4, halo=2)
    >>> match_region(a, b, 1)
    (slice(0, 4, None), slice(3, 5, None))
    """
    region = []
    for ca, cb, sa, sb in zip(a.core, b.core, a.ext, b.ext):
        lo = max(ca.start - margin, cb.start - margin, sa.start, sb.start)
        hi = min(ca.stop + margin, cb.stop + margin, sa.stop, sb.stop)
        if hi <= lo:
            return None
        region.append(slice(lo, hi))
    return tuple(region)


def within(region, block: Block) -> tuple:
    """``region`` (image coordinates) as slices of ``block``'s extended region.

    Examples
    --------
    >>> a, b = block_grid((4, 8), 4, halo=1)
    >>> within(shared_region(a, b), b)
    (slice(0, 4, None), slice(0, 2, None))
    """
    return tuple(slice(r.start - e.start, r.stop - e.start) for r, e in zip(region, block.ext))
