"""Large images in, a block at a time: zarr, OME-Zarr, TIFF, dask (the labels go out by :mod:`.writers`).

:func:`open_image` turns what the user has (a zarr array or group, an
OME-Zarr image, a TIFF file, a dask or numpy array) into an
:class:`ImageSource`: a small, picklable description that a dask worker uses
to read one region itself (:meth:`ImageSource.read`), so that the image never
passes through the client and is never read whole.  TIFFs are read through
tifffile's zarr store (``tifffile.imread(path, aszarr=True)``): a tiled or
striped TIFF is read tile by tile.

zarr and tifffile's zarr store are imported inside the functions (the
``distributed`` extra).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from cellpose_nb.normalize import MAX_GUESSED_CHANNELS

__all__ = ["EXTRA_HINT", "ImageSource", "open_image", "require"]

EXTRA_HINT = "pip install 'cellpose-nb[distributed]'"
ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")
SPATIAL_AXES = ("z", "y", "x")  # a volume's planes, rows, columns (an image has no "z")


def require(module: str):
    """Import ``module`` of the distributed extra, or an ImportError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for block-wise segmentation: {EXTRA_HINT}") from exc


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """Where a large 2-D image or 3-D volume lives and how to read a region of it.

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
        Per stored axis: ``"z"`` (a volume's planes), ``"y"``, ``"x"``, ``"c"``
        (channels) or an int (a singleton axis, taken at that index).
    shape : tuple of int
        Rows and columns; planes first for a volume.
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

    @property
    def ndim(self) -> int:
        """2 for an image, 3 for a volume."""
        return len(self.shape)

    def read(self, region) -> np.ndarray:
        """The pixels of ``region`` (a slice per axis of ``shape``): (h, w) or (d, h, w), then C."""
        axes = SPATIAL_AXES[-self.ndim:]
        key = tuple(region[axes.index(a)] if a in SPATIAL_AXES
                    else (slice(None) if a == "c" else a) for a in self.index)
        if self.kind == "dask":
            out = np.asarray(self.array[key].compute(scheduler="sync"))
        elif self.kind == "numpy":
            out = np.asarray(self.array[key])
        else:
            out = np.asarray(_stored_array(self.kind, self.location, self.component)[key])
        kept = [a for a in self.index if isinstance(a, str)]
        order = [kept.index(a) for a in (*axes, "c") if a in kept]
        return out.transpose(order) if order != sorted(order) else out

    def describe(self) -> str:
        """One line for messages: where the image is and its shape."""
        where = self.location or f"a {self.kind} array"
        chans = f" x {self.n_channels} channels" if self.n_channels else ""
        size = " x ".join(str(n) for n in self.shape)
        return f"{where} ({size} {'voxels' if self.ndim == 3 else 'px'}{chans}, {np.dtype(self.dtype)})"


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


def _guessed_names(shape, channel_axis, z_axis, volume, where):
    """Axis names of an array without metadata: segment's layout rules."""
    ndim = len(shape)
    if not volume:  # (H, W), or (H, W, C) with the channels last or at channel_axis
        if ndim == 2:
            return ["y", "x"]
        if ndim == 3:
            if channel_axis is None and shape[-1] > MAX_GUESSED_CHANNELS:
                raise ValueError(
                    f"{where} has shape {tuple(shape)}: not a 2-D image with at most "
                    f"{MAX_GUESSED_CHANNELS} channels last; pass channel_axis (--channel-axis) if "
                    "the channels are on another axis, or do_3d=True (--3d) for a volume")
            names = ["y", "x"]
            names.insert((-1 if channel_axis is None else channel_axis) % 3, "c")
            return names
        raise ValueError(f"{where} has shape {tuple(shape)}; expected (H, W) or (H, W, C) "
                         "(or a volume, with do_3d=True / --3d)")
    if ndim == 2:
        raise ValueError(f"{where} is a 2-D image of shape {tuple(shape)}: segment it without "
                         "do_3d (--3d)")
    if ndim == 3 and channel_axis is not None:
        raise ValueError(f"{where} has shape {tuple(shape)}: with channel_axis={channel_axis} it is "
                         "a 2-D image with channels; segment it without do_3d (--3d), or give a "
                         "(Z, Y, X, C) volume")
    if ndim == 4 and channel_axis is None:
        raise ValueError(f"{where} has shape {tuple(shape)}: a 4-D volume needs channel_axis "
                         "(--channel-axis), and z_axis (--z-axis) if Z is not axis 0")
    if ndim not in (3, 4):
        raise ValueError(f"{where} has shape {tuple(shape)}; a volume is (Z, Y, X) or (Z, Y, X, C)")
    try:
        z = range(ndim)[0 if z_axis is None else z_axis]
        c = None if channel_axis is None else range(ndim)[channel_axis]
    except (IndexError, TypeError):
        raise ValueError(f"z_axis={z_axis!r} / channel_axis={channel_axis!r} are not axes of "
                         f"{where} (shape {tuple(shape)})") from None
    if z == c:
        raise ValueError(f"z_axis and channel_axis are the same axis ({z}) of {where}")
    rest = iter(["y", "x"])
    return ["z" if k == z else "c" if k == c else next(rest) for k in range(ndim)]


def _axes_index(shape, names, channel_axis, where, *, z_axis=None, volume=False):
    """Per-axis roles (see ``ImageSource.index``) from axis names or the layout rules."""
    if names is None:
        names = _guessed_names(shape, channel_axis, z_axis, volume, where)
    names = [str(n).lower() for n in names]
    index = []
    for n, size in zip(names, shape):
        if n in ("y", "x") or (n == "c" and size > 1) or (n == "z" and volume):
            index.append(n)
        elif size == 1:
            index.append(0)
        elif n == "z":
            raise ValueError(f"{where} is a volume ({size} z planes, shape {tuple(shape)}); "
                             "segment it with do_3d=True (--3d)")
        else:
            raise ValueError(f"{where} has {size} entries on its {n!r} axis (shape {tuple(shape)}); "
                             "give one image or volume (e.g. one time point)")
    spatial = sorted(a for a in index if a in SPATIAL_AXES)
    if spatial != (["x", "y", "z"] if volume else ["x", "y"]):
        raise ValueError(f"{where}: axes {names} do not name one y and one x axis"
                         + (" and one z axis (do_3d needs a volume)" if volume else ""))
    if volume and shape[index.index("z")] == 1:
        raise ValueError(f"{where} has one z plane (shape {tuple(shape)}): a stack of one slice "
                         "is a 2-D image; segment it without do_3d (--3d)")
    return tuple(index)


def _tiff_axes(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes
    # Q: an axis tifffile cannot name (e.g. the planes of a channels-first ImageJ-less TIFF)
    return [{"Y": "y", "X": "x", "S": "c", "C": "c", "Q": "c", "Z": "z", "T": "t"}.get(a, a.lower()) for a in axes]


def open_image(image, *, channel_axis=None, component=None, z_axis=None, volume=False,
               allow_missing=False) -> ImageSource:
    """Describe a large 2-D image, or with ``volume=True`` a 3-D volume, for block-wise reading.

    Parameters
    ----------
    image : str, Path, zarr array, dask array or ndarray
        A zarr store (``.zarr`` folder: an array, or a group with
        ``component``), an OME-Zarr image (its first multiscale level; axes
        from its metadata), a TIFF file (read through tifffile's zarr store),
        or an array.  A numpy array is copied to the workers: for images that
        fit in memory.
    channel_axis : int, optional
        Channel axis of an array without axis metadata (default for an image:
        last when it has at most 4 entries; a 4-D volume must name it).
    component : str, optional
        Path of the array inside a zarr group.
    z_axis : int, optional
        Plane axis of a volume without axis metadata (default 0).
    volume : bool
        The image is a (Z, Y, X) volume, perhaps with channels.
    allow_missing : bool
        Accept a zarr array with chunks that were never written (read as its
        fill value); by default that is an error, as an interrupted copy or
        conversion leaves such holes.

    Returns
    -------
    ImageSource

    Examples
    --------
    >>> src = open_image(np.zeros((30, 40, 2), np.uint16))
    >>> src.shape, src.n_channels, src.read((slice(0, 5), slice(10, 20))).shape
    ((30, 40), 2, (5, 10, 2))
    >>> vol = open_image(np.zeros((40, 30, 6), np.uint16), z_axis=-1, volume=True)
    >>> vol.shape, vol.read((slice(0, 2), slice(0, 5), slice(0, 3))).shape
    ((6, 40, 30), (2, 5, 3))
    """
    opts = dict(channel_axis=channel_axis, z_axis=z_axis, volume=bool(volume))
    if isinstance(image, (str, Path)):
        return _open_path(Path(image), component, allow_missing=allow_missing, **opts)
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
    index = _axes_index(arr.shape, None, where=f"the {kind} array", **opts)
    return _source(kind, None, None, arr, index, arr.shape, arr.dtype)


def _source(kind, location, component, arr, index, shape, dtype):
    by_role = {a: shape[k] for k, a in enumerate(index) if a in SPATIAL_AXES}
    spatial = [by_role[a] for a in SPATIAL_AXES if a in by_role]
    n_chan = shape[index.index("c")] if "c" in index else 0
    if min(spatial) < 1:
        raise ValueError(f"the image is empty (shape {tuple(shape)})")
    return ImageSource(kind, location, component, arr, index, tuple(int(s) for s in spatial),
                       int(n_chan), np.dtype(dtype))


def _open_path(path, component, *, channel_axis, z_axis, volume, allow_missing):
    if not path.exists():
        raise FileNotFoundError(f"no such image: {path}")
    zarr = require("zarr")
    given = channel_axis is not None or z_axis is not None  # the caller's layout beats metadata
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        try:
            arr = _stored_array("tiff", str(path), None)
        except Exception as exc:
            raise ValueError(f"cannot read {path} as a TIFF: {exc}") from exc
        level = None
        if not hasattr(arr, "shape"):  # a pyramidal TIFF: its full-size level
            level, arr = "0", arr["0"]
        names = None if given else _tiff_axes(path)
        index = _axes_index(arr.shape, names, channel_axis, str(path), z_axis=z_axis, volume=volume)
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
    index = _axes_index(node.shape, None if given else names, channel_axis, str(path),
                        z_axis=z_axis, volume=volume)
    if not allow_missing:
        _check_chunks(node, path, component)
    return _source("zarr", str(path), component, None, index, node.shape, node.dtype)


def _check_chunks(node, path, component):
    """Refuse a zarr array with chunks never written: they would read as the fill value."""
    try:
        missing = node.nchunks - node.nchunks_initialized
    except Exception:  # a store that cannot list its keys: nothing to check
        return
    if missing > 0:
        where = f"{path}" + (f" ({component})" if component else "")
        raise ValueError(f"{where}: {missing} of {node.nchunks} chunks are missing (never written, or "
                         f"deleted); zarr would read them as the fill value {np.asarray(node.fill_value).item()!r} and "
                         "their cells would silently be lost. Re-write the store, or pass "
                         "allow_missing=True if those chunks are empty on purpose (zarr leaves out "
                         "chunks that are all fill value)")
