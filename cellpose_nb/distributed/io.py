"""Large images in and label images out, a block at a time: zarr, OME-Zarr, TIFF, dask.

:func:`open_image` turns what the user has (a zarr array or group, an
OME-Zarr image, a TIFF file, a dask or numpy array) into an
:class:`ImageSource`: a small, picklable description that a dask worker uses
to read one region itself (:meth:`ImageSource.read`), so that the image never
passes through the client and is never read whole.  TIFFs are read through
tifffile's zarr store (``tifffile.imread(path, aszarr=True)``): a tiled or
striped TIFF is read tile by tile.

The writers take the stitched labels as a zarr array (written block by block)
and produce the user's format without holding the image: a zarr array, an
OME-Zarr labels image (NGFF ``labels/<name>`` with a nearest-neighbour
pyramid, via ``ome_zarr.writer``; napari opens ``<store>/labels/<name>``), or a
tiled BigTIFF through :mod:`cellpose_nb.atomic`.

zarr, tifffile's zarr store and ome-zarr are imported inside the functions
(the ``distributed`` extra).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellpose_nb.normalize import MAX_GUESSED_CHANNELS

__all__ = [
    "CELL_TABLE_COLUMNS",
    "EXTRA_HINT",
    "PYRAMID_LEVELS",
    "TIFF_TILE",
    "ImageSource",
    "open_image",
    "write_cells_table",
    "write_masks_tiff",
    "write_masks_zarr",
    "write_ome_zarr_labels",
]

EXTRA_HINT = "pip install 'cellpose-nb[distributed]'"
TIFF_TILE = 512  # tile side of the TIFFs written (a multiple of 16, as TIFF requires)
PYRAMID_LEVELS = 4  # OME-Zarr label levels written: full size, then halved each time
ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")
SPATIAL_AXES = ("y", "x")


def require(module: str):
    """Import ``module`` of the distributed extra, or an ImportError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for block-wise segmentation: {EXTRA_HINT}") from exc


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """Where a large 2-D image lives and how to read a region of it.

    Attributes
    ----------
    kind : {"zarr", "tiff", "dask", "numpy"}
    location : str or None
        The zarr store or TIFF file (zarr / tiff), else None.
    component : str or None
        The array inside a zarr group (e.g. an OME-Zarr level), or the TIFF level.
    array : object or None
        The dask or numpy array itself (dask / numpy).
    index : tuple
        Per stored axis: ``"y"``, ``"x"``, ``"c"`` (channels) or an int (a
        singleton axis, taken at that index).
    shape : (int, int)
        Rows and columns.
    n_channels : int
        0 for a gray image without a channel axis.
    dtype : numpy dtype
    """

    kind: str
    location: str | None
    component: str | None
    array: Any
    index: tuple
    shape: tuple
    n_channels: int
    dtype: Any

    def read(self, region) -> np.ndarray:
        """The pixels of ``region`` ((slice, slice) of rows, cols): (h, w) or (h, w, C)."""
        key = tuple(region[SPATIAL_AXES.index(a)] if a in SPATIAL_AXES
                    else (slice(None) if a == "c" else a) for a in self.index)
        if self.kind == "dask":
            out = np.asarray(self.array[key].compute(scheduler="sync"))
        elif self.kind == "numpy":
            out = np.asarray(self.array[key])
        else:
            out = np.asarray(_stored_array(self.kind, self.location, self.component)[key])
        kept = [a for a in self.index if isinstance(a, str)]
        if "c" in kept:
            out = np.moveaxis(out, kept.index("c"), -1)
        if kept.index("y") > kept.index("x"):
            out = np.swapaxes(out, 0, 1)
        return out

    def describe(self) -> str:
        """One line for messages: where the image is and its shape."""
        where = self.location or f"a {self.kind} array"
        chans = f" x {self.n_channels} channels" if self.n_channels else ""
        return f"{where} ({self.shape[0]} x {self.shape[1]} px{chans}, {np.dtype(self.dtype)})"


@functools.lru_cache(maxsize=8)
def _stored_array(kind, location, component):
    """The zarr array of a store or TIFF, opened once per process (each dask worker)."""
    zarr = require("zarr")
    if kind == "tiff":
        import tifffile

        node = zarr.open(tifffile.imread(location, aszarr=True), mode="r")
    else:
        node = zarr.open(location, mode="r")
    if component is not None:
        node = node[component]
    return node


def _ome_multiscales(attrs):
    """The ``multiscales`` list of OME-Zarr attributes (NGFF 0.4 or 0.5), or None."""
    attrs = dict(attrs)
    return attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")


def _axes_index(shape, names, channel_axis, where):
    """Per-axis roles (see ``ImageSource.index``) from axis names or the layout rules."""
    ndim = len(shape)
    if names is None:  # no metadata: 2-D, or 3-D with a channel axis (normalize's rule)
        if ndim == 2:
            names = ["y", "x"]
        elif ndim == 3:
            if channel_axis is None and shape[-1] > MAX_GUESSED_CHANNELS:
                raise ValueError(
                    f"{where} has shape {tuple(shape)}: not a 2-D image with at most "
                    f"{MAX_GUESSED_CHANNELS} channels last; pass channel_axis (--channel-axis) if "
                    "the channels are on another axis (3-D volumes are not supported block-wise yet)")
            axis = (-1 if channel_axis is None else channel_axis) % 3
            names = ["y", "x"]
            names.insert(axis, "c")
        else:
            raise ValueError(f"{where} has shape {tuple(shape)}; expected (H, W) or (H, W, C)")
    names = [str(n).lower() for n in names]
    index = []
    for n, size in zip(names, shape):
        if n in SPATIAL_AXES or (n == "c" and size > 1):
            index.append(n)
        elif size == 1:
            index.append(0)
        elif n == "z":
            raise ValueError(f"{where} is a volume ({size} z planes, shape {tuple(shape)}); "
                             "block-wise segmentation is 2-D for now")
        else:
            raise ValueError(f"{where} has {size} entries on its {n!r} axis (shape {tuple(shape)}); "
                             "give one 2-D image (e.g. one time point)")
    if sorted(a for a in index if a in SPATIAL_AXES) != ["x", "y"]:
        raise ValueError(f"{where}: axes {names} do not name one y and one x axis")
    return tuple(index)


def _tiff_axes(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes
    # Q: an axis tifffile cannot name (e.g. the planes of a channels-first ImageJ-less TIFF)
    return [{"Y": "y", "X": "x", "S": "c", "C": "c", "Q": "c", "Z": "z", "T": "t"}.get(a, a.lower()) for a in axes]


def open_image(image, *, channel_axis=None, component=None) -> ImageSource:
    """Describe a large 2-D image for block-wise reading.

    Parameters
    ----------
    image : str, Path, zarr array, dask array or ndarray
        A zarr store (``.zarr`` folder: an array, or a group with
        ``component``), an OME-Zarr image (its first multiscale level; axes
        from its metadata), a TIFF file (read through tifffile's zarr store),
        or an array.  A numpy array is copied to the workers: for images that
        fit in memory.
    channel_axis : int, optional
        Channel axis of a 3-D array without axis metadata (default: last when
        it has at most 4 entries).
    component : str, optional
        Path of the array inside a zarr group.

    Returns
    -------
    ImageSource

    Examples
    --------
    >>> src = open_image(np.zeros((30, 40, 2), np.uint16))
    >>> src.shape, src.n_channels, src.read((slice(0, 5), slice(10, 20))).shape
    ((30, 40), 2, (5, 10, 2))
    """
    if isinstance(image, (str, Path)):
        return _open_path(Path(image), channel_axis, component)
    if type(image).__module__.startswith("dask"):
        kind, arr = "dask", image
    elif isinstance(image, np.ndarray):
        kind, arr = "numpy", image
    elif type(image).__module__.startswith("zarr"):
        kind, arr = "dask", require("dask.array").from_zarr(image)
    else:
        raise TypeError(f"image must be a path, a zarr, dask or numpy array; got {type(image).__name__}")
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise TypeError(f"image must be numeric; got dtype {arr.dtype}")
    index = _axes_index(arr.shape, None, channel_axis, f"the {kind} array")
    return _source(kind, None, None, arr, index, arr.shape, arr.dtype)


def _source(kind, location, component, arr, index, shape, dtype):
    spatial = [shape[k] for k, a in enumerate(index) if a in SPATIAL_AXES]
    if index.index("y") > index.index("x"):
        spatial = spatial[::-1]
    n_chan = shape[index.index("c")] if "c" in index else 0
    if min(spatial) < 1:
        raise ValueError(f"the image is empty (shape {tuple(shape)})")
    return ImageSource(kind, location, component, arr, index, tuple(int(s) for s in spatial),
                       int(n_chan), np.dtype(dtype))


def _open_path(path, channel_axis, component):
    if not path.exists():
        raise FileNotFoundError(f"no such image: {path}")
    zarr = require("zarr")
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        try:
            arr = _stored_array("tiff", str(path), None)
        except Exception as exc:
            raise ValueError(f"cannot read {path} as a TIFF: {exc}") from exc
        level = None
        if not hasattr(arr, "shape"):  # a pyramidal TIFF: its full-size level
            level, arr = "0", arr["0"]
        names = None if channel_axis is not None else _tiff_axes(path)
        index = _axes_index(arr.shape, names, channel_axis, str(path))
        return _source("tiff", str(path), level, None, index, arr.shape, arr.dtype)
    if not path.is_dir():
        raise ValueError(f"{path}: expected a TIFF file or a zarr store (a folder)")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{path} is not a zarr store: {exc}") from exc
    names = None
    if not hasattr(node, "shape"):  # a group: OME-Zarr, or name the array
        multiscales = _ome_multiscales(node.attrs)
        if component is None and multiscales:
            component = multiscales[0]["datasets"][0]["path"]
            axes = multiscales[0].get("axes")
            names = [a["name"] if isinstance(a, dict) else a for a in axes] if axes else None
        if component is None:
            members = sorted(k for k, _ in node.arrays())
            raise ValueError(f"{path} is a zarr group without OME-Zarr metadata; name its array "
                             f"(component=, or PATH.zarr/ARRAY), one of {members}")
        node = node[component]
    if not np.issubdtype(node.dtype, np.number) or node.dtype == bool:
        raise TypeError(f"{path} holds dtype {node.dtype}; expected a numeric image")
    index = _axes_index(node.shape, None if channel_axis is not None else names, channel_axis, str(path))
    return _source("zarr", str(path), component, None, index, node.shape, node.dtype)


# --- writers -------------------------------------------------------------------------------
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

    The pyramid (nearest neighbour, halved per level) is computed by dask from
    the full-size array, chunk by chunk, on the current dask client if any.
    """
    zarr, da = require("zarr"), require("dask.array")
    writer = _ome_writer()
    full = da.from_zarr(zarr.open_array(str(labels_path), mode="r"))
    pyramid = [full]
    while len(pyramid) < levels and min(pyramid[-1].shape) >= 2:
        pyramid.append(pyramid[-1][::2, ::2])
    root = zarr.open_group(str(out), mode="w-")
    chunks = [tuple(min(c, s) for c, s in zip(full.chunksize, p.shape)) for p in pyramid]
    writer.write_multiscale_labels([p.rechunk(c) for p, c in zip(pyramid, chunks)], root, name,
                                   axes="yx")
    return Path(out)


def write_masks_tiff(labels_path, out, *, overwrite=False):
    """A tiled, zlib-compressed (Big)TIFF of the zarr labels, written tile by tile.

    uint16 when every label is below 65535 (as :func:`cellpose_nb.export.write_masks_tif`),
    else uint32 (int64 labels beyond 2**32 - 1 cells raise).
    """
    import tifffile

    from cellpose_nb.atomic import write_file

    zarr = require("zarr")
    arr = zarr.open_array(str(labels_path), mode="r")
    n_max = int(arr.attrs.get("n_cells", np.iinfo(np.uint32).max))
    dtype = np.uint16 if n_max < np.iinfo(np.uint16).max else np.uint32
    if n_max > np.iinfo(np.uint32).max:
        raise ValueError(f"{n_max} cells do not fit a uint32 TIFF; write zarr or OME-Zarr instead")
    rows, cols = arr.shape

    def tiles():
        for r in range(0, rows, TIFF_TILE):
            for c in range(0, cols, TIFF_TILE):
                tile = np.zeros((TIFF_TILE, TIFF_TILE), dtype)
                part = arr[r:r + TIFF_TILE, c:c + TIFF_TILE]
                tile[:part.shape[0], :part.shape[1]] = part
                yield tile

    big = rows * cols * np.dtype(dtype).itemsize > 2 ** 31
    return write_file(out, lambda tmp: tifffile.imwrite(
        tmp, tiles(), shape=(rows, cols), dtype=dtype, tile=(TIFF_TILE, TIFF_TILE),
        compression="zlib", bigtiff=big), overwrite=overwrite)


#: the columns of the block-wise cell table: export.CSV_COLUMNS, then the bounding box
CELL_TABLE_COLUMNS = ("label", "area", "centroid_row", "centroid_col", "equivalent_diameter",
                      "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")


def write_cells_table(path, cells, *, overwrite=False):
    """Write the stitched cell table (:func:`~cellpose_nb.distributed.stitch.merge_tables`) as CSV.

    The first columns are those of :func:`cellpose_nb.export.write_cells_csv`.

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

    columns = [np.asarray(cells[k]) for k in CELL_TABLE_COLUMNS]

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CELL_TABLE_COLUMNS)
            writer.writerows(zip(*(c.tolist() for c in columns)))

    return write_file(path, write, overwrite=overwrite)
