"""The stitched labels out, a block at a time: zarr, OME-Zarr labels, tiled TIFF, the cell table.

The writers take the stitched labels as a zarr array (written block by block)
and produce the user's format without holding the image: a zarr array, an
OME-Zarr labels image (NGFF ``labels/<name>`` with a nearest-neighbour
pyramid, via ``ome_zarr.writer``; napari opens ``<store>/labels/<name>``), or a
tiled BigTIFF through :mod:`cellpose_nb.atomic`.

zarr, tifffile and ome-zarr are imported inside the functions (the
``distributed`` extra).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cellpose_nb.distributed.io import require
from cellpose_nb.export3d import CSV_COLUMNS_3D

__all__ = [
    "CELL_TABLE_COLUMNS",
    "CELL_TABLE_COLUMNS_3D",
    "PYRAMID_LEVELS",
    "TIFF_TILE",
    "write_cells_table",
    "write_masks_tiff",
    "write_masks_zarr",
    "write_ome_zarr_labels",
]

TIFF_TILE = 512  # tile side of the TIFFs written (a multiple of 16, as TIFF requires)
PYRAMID_LEVELS = 4  # OME-Zarr label levels written: full size, then halved each time


def write_masks_zarr(labels_path, out):
    """Make the zarr array at ``labels_path`` the user's zarr array ``out`` (a rename)."""
    import os

    os.replace(labels_path, out)
    return Path(out)


def _ome_writer():
    with warnings.catch_warnings():  # ome_zarr.writer's import-time notice about its Scaler class
        warnings.simplefilter("ignore", DeprecationWarning)
        import ome_zarr.writer

    return ome_zarr.writer


def write_ome_zarr_labels(labels_path, out, *, name="masks", levels=PYRAMID_LEVELS):
    """An OME-Zarr store ``out`` whose ``labels/<name>`` is the zarr array at ``labels_path``.

    The pyramid (nearest neighbour, rows and columns halved per level; a
    volume keeps its planes, as its Z is usually sampled coarser already) is
    computed by dask from the full-size array, chunk by chunk, on the current
    dask client if any.  Axes ``yx``, or ``zyx`` for a volume.
    """
    zarr, da = require("zarr"), require("dask.array")
    writer = _ome_writer()
    full = da.from_zarr(zarr.open_array(str(labels_path), mode="r"))
    half = (slice(None),) * (full.ndim - 2) + (slice(None, None, 2),) * 2
    pyramid = [full]
    while len(pyramid) < levels and min(pyramid[-1].shape[-2:]) >= 2:
        pyramid.append(pyramid[-1][half])
    root = zarr.open_group(str(out), mode="w-")
    chunks = [tuple(min(c, s) for c, s in zip(full.chunksize, p.shape)) for p in pyramid]
    writer.write_multiscale_labels([p.rechunk(c) for p, c in zip(pyramid, chunks)], root, name,
                                   axes="zyx"[-full.ndim:])
    return Path(out)


def write_masks_tiff(labels_path, out, *, overwrite=False):
    """A tiled, zlib-compressed (Big)TIFF of the zarr labels, written tile by tile.

    A volume is one page per plane (axes ``ZYX`` in tifffile's metadata, which
    Fiji and napari read).  uint16 when every label is below 65535 (as
    :func:`cellpose_nb.export.write_masks_tif`), else uint32 (int64 labels
    beyond 2**32 - 1 cells raise).
    """
    import tifffile

    from cellpose_nb.atomic import write_file

    zarr = require("zarr")
    arr = zarr.open_array(str(labels_path), mode="r")
    n_max = int(arr.attrs.get("n_cells", np.iinfo(np.uint32).max))
    dtype = np.uint16 if n_max < np.iinfo(np.uint16).max else np.uint32
    if n_max > np.iinfo(np.uint32).max:
        raise ValueError(f"{n_max} cells do not fit a uint32 TIFF; write zarr or OME-Zarr instead")
    shape = arr.shape
    planes = [()] if arr.ndim == 2 else [(z,) for z in range(shape[0])]
    rows, cols = shape[-2:]

    def tiles():
        for plane in planes:
            for r in range(0, rows, TIFF_TILE):
                for c in range(0, cols, TIFF_TILE):
                    tile = np.zeros((TIFF_TILE, TIFF_TILE), dtype)
                    part = arr[(*plane, slice(r, r + TIFF_TILE), slice(c, c + TIFF_TILE))]
                    tile[:part.shape[0], :part.shape[1]] = part
                    yield tile

    big = int(np.prod(shape)) * np.dtype(dtype).itemsize > 2 ** 31
    return write_file(out, lambda tmp: tifffile.imwrite(
        tmp, tiles(), shape=shape, dtype=dtype, tile=(TIFF_TILE, TIFF_TILE), compression="zlib",
        bigtiff=big, metadata={"axes": "ZYX"[-arr.ndim:]}), overwrite=overwrite)


#: the columns of the block-wise cell table: export.CSV_COLUMNS, then the bounding box
CELL_TABLE_COLUMNS = ("label", "area", "centroid_row", "centroid_col", "equivalent_diameter",
                      "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")
#: ... of a volume: export3d.CSV_COLUMNS_3D, then the diameter of the ball of that volume
CELL_TABLE_COLUMNS_3D = (*CSV_COLUMNS_3D, "equivalent_diameter")


def write_cells_table(path, cells, *, overwrite=False):
    """Write the stitched cell table (:func:`~cellpose_nb.distributed.stitch.merge_tables`) as CSV.

    The first columns are those of :func:`cellpose_nb.export.write_cells_csv`
    (of :func:`cellpose_nb.export3d.write_cells_csv_3d` for a volume).

    Examples
    --------
    >>> import tempfile
    >>> cells = {k: np.array([1]) for k in CELL_TABLE_COLUMNS}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_cells_table(f"{tmp}/c.csv", cells).read_text().splitlines()[1]
    '1,1,1,1,1,1,1,1,1'
    """
    import csv

    from cellpose_nb.atomic import write_file

    names = CELL_TABLE_COLUMNS_3D if "volume" in cells else CELL_TABLE_COLUMNS
    columns = [np.asarray(cells[k]) for k in names]

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            writer.writerows(zip(*(c.tolist() for c in columns)))

    return write_file(path, write, overwrite=overwrite)
