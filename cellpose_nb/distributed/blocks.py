"""The block grid of a large image or volume: cores that tile it, and cores grown by a halo.

A large image (rows, cols) or volume (planes, rows, cols) is cut into a grid of
*cores* of ``block_size`` pixels (the last core along each axis takes what is
left, so the size need not divide the image).  Each core is segmented together
with a *halo* of ``halo`` pixels on every side (clipped at the image border):
its *extended region*.  The halo
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

import itertools
import math
import numbers
from typing import NamedTuple

__all__ = [
    "BLOCK_SIZE",
    "HALO_DIAMETERS",
    "Block",
    "block_grid",
    "check_blocks",
    "grid_shape",
    "grid_step",
    "halo_for",
    "halos",
    "neighbour_pairs",
    "shared_region",
    "within",
]

#: halo width, in cell diameters (cellpose's contrib script: 2, but its halo is discarded)
HALO_DIAMETERS = 2.0
#: default core side in pixels: a few hundred cells of 30 px, about 100 MB of float32 work
BLOCK_SIZE = 1024


class Block(NamedTuple):
    """One block of a :func:`block_grid` (two entries per tuple for an image, three for a volume).

    Attributes
    ----------
    index : tuple of int
        (row, col), or (plane, row, col), of the block in the grid.
    core : tuple of slice
        The pixels this block writes, in image coordinates.
    ext : tuple of slice
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


def _ints(value, name, ndim):
    """``value`` as ``ndim`` integers (one integer is used for every axis)."""
    try:
        vals = (value,) * ndim if isinstance(value, numbers.Integral) else tuple(value)
    except TypeError:
        vals = ()
    if len(vals) != ndim or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                    for v in vals):
        raise TypeError(f"{name} must be an integer or {ndim} integers; got {value!r}")
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


def halos(diameter, halo, ndim, anisotropy, *, multiple=1) -> tuple:
    """The halo per axis: ``halo_for`` the diameter (or the ``halo`` given, one int or one
    per axis); a volume's Z halo is the in-plane one over the anisotropy (the same length).

    Examples
    --------
    >>> halos(34.0, None, 2, 1.0, multiple=32), halos(10.0, None, 3, 2.0), halos(10.0, (4, 8, 8), 3, 1.0)
    ((96, 96), (10, 20, 20), (4, 8, 8))
    """
    if halo is None or isinstance(halo, numbers.Integral):
        xy = halo_for(diameter, multiple=multiple) if halo is None else int(halo)
        z = (math.ceil(xy / anisotropy),) if ndim == 3 else ()
        return (*z, xy, xy)
    return _ints(halo, "halo", ndim)


def check_blocks(shape, block_size, halo, diameter):
    """A block smaller than its halo is refused where the image has more than one block."""
    for n, b, h, axis in zip(shape, block_size, halo, ("planes", "rows", "cols")[-len(shape):]):
        if n > b and b < h:
            unit = "planes" if axis == "planes" else "px"
            raise ValueError(f"block_size {b} ({axis}) is smaller than the halo of {h} {unit} for "
                             f"cells of {diameter:g} px: every block would segment more halo than "
                             f"core; use blocks of at least {h} {unit} there (or a smaller halo=)")


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
    """Cut an image of ``shape`` (rows, cols) or (planes, rows, cols) into cores with a ``halo``.

    Parameters
    ----------
    shape : tuple of int
        Rows and columns of the image (planes first for a volume).
    block_size : int or tuple of int
        Core side(s) in pixels; the last core along an axis is smaller when
        the size does not divide the image.
    halo : int or tuple of int
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
    >>> [b.index for b in block_grid((5, 8, 8), (5, 4, 4), halo=(1, 2, 2))]
    [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    """
    try:
        ndim = len(shape)
    except TypeError:
        ndim = 0
    if ndim not in (2, 3):
        raise TypeError(f"shape must be (rows, cols) or (planes, rows, cols); got {shape!r}")
    shape = _ints(shape, "shape", ndim)
    size, halo_ = _ints(block_size, "block_size", ndim), _ints(halo, "halo", ndim)
    if min(shape) < 1:
        raise ValueError(f"shape must be positive; got {shape!r}")
    if min(size) < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size!r}")
    if min(halo_) < 0:
        raise ValueError(f"halo must be >= 0; got {halo!r}")
    starts = [range(0, n, b) for n, b in zip(shape, size)]
    out = []
    for index in itertools.product(*(range(len(r)) for r in starts)):
        lo = [r[k] for r, k in zip(starts, index)]
        hi = [min(a + b, n) for a, b, n in zip(lo, size, shape)]
        core = tuple(slice(a, b) for a, b in zip(lo, hi))
        ext = tuple(slice(max(a - h, 0), min(b + h, n)) for a, b, h, n in zip(lo, hi, halo_, shape))
        out.append(Block(tuple(index), core, ext))
    return out


def grid_shape(blocks) -> tuple:
    """Blocks per axis of a grid: (rows, cols), or (planes, rows, cols).

    Examples
    --------
    >>> grid_shape(block_grid((10, 7), 4)), grid_shape(block_grid((3, 10, 7), 4))
    ((3, 2), (1, 3, 2))
    """
    return tuple(max(b.index[k] for b in blocks) + 1 for k in range(len(blocks[0].index)))


def _forward_offsets(ndim):
    """Grid offsets to the neighbours that come after a block, each pair of blocks once:
    those whose first non-zero entry is positive (4 in 2-D, 13 in 3-D)."""
    return [d for d in itertools.product((-1, 0, 1), repeat=ndim)
            if any(d) and d[next(k for k, v in enumerate(d) if v)] > 0]


def neighbour_pairs(blocks):
    """Pairs (a, b) of positions in ``blocks`` whose extended regions overlap, each once.

    Every block and its face, edge and corner neighbours (in 2-D: the right,
    lower, lower-right and lower-left ones): the cells at a corner of four
    blocks (eight in a volume) are matched across every pair.

    Examples
    --------
    >>> sorted(neighbour_pairs(block_grid((8, 8), 4, halo=1)))
    [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    >>> len(neighbour_pairs(block_grid((8, 8, 8), 4, halo=1)))  # all 28 pairs of 8 blocks
    28
    """
    where = {b.index: k for k, b in enumerate(blocks)}
    offsets = _forward_offsets(len(blocks[0].index)) if blocks else []
    out = []
    for k, b in enumerate(blocks):
        for d in offsets:
            other = where.get(tuple(i + di for i, di in zip(b.index, d)))
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
    """Where the labels of ``a`` and ``b`` are compared: both cores grown by ``margin`` (an int,
    or one per axis), intersected.

    Half a halo from the core boundary, both blocks are at least half a halo
    from the edge of what they segmented, where masks are least reliable; a
    cell crossing the boundary that is smaller than ``margin`` lies wholly inside.

    Examples
    --------
    >>> a, b = block_grid((4, 8), 4, halo=2)
    >>> match_region(a, b, 1)
    (slice(0, 4, None), slice(3, 5, None))
    """
    margins = _ints(margin, "margin", len(a.core))
    region = []
    for ca, cb, sa, sb, m in zip(a.core, b.core, a.ext, b.ext, margins):
        lo = max(ca.start - m, cb.start - m, sa.start, sb.start)
        hi = min(ca.stop + m, cb.stop + m, sa.stop, sb.stop)
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
