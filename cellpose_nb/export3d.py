"""Write 3D segmentation results: an ImageJ hyperstack of the labels, a per-cell CSV
and the Cellpose GUI's ``_seg.npy`` of a (Z, Y, X) volume.

The 3D twins of :mod:`cellpose_nb.export`'s writers, with the same rules: no
file is replaced unless ``overwrite=True`` (FileExistsError naming the path),
and every file goes through :mod:`cellpose_nb.atomic`.  ``voxel_size`` is
``(dz, dy, dx)`` in micrometres.  :func:`cellpose_nb.export.export_all` calls
the ``_*_job`` functions here when the labels are 3D.  This module also owns
the Cellpose GUI conventions both dimensionalities share (``GUI_DIAMETER``,
``SEG_UINT16_LIMIT``, :func:`flow_circ`), since :mod:`~cellpose_nb.export`
imports it and not the other way round.

NumPy layer: no torch; tifffile and skimage are imported inside the functions.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from cellpose_nb.atomic import write_file
from cellpose_nb.data.files import SEG_SUFFIX
from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.labels import check_labels
from cellpose_nb.normalize import normalize_percentile

__all__ = ["write_masks_tif_3d", "cell_table_3d", "write_cells_csv_3d", "write_seg_npy_3d",
           "flow_circ", "FORMATS_3D", "GUI_DIAMETER", "SEG_UINT16_LIMIT"]

GUI_DIAMETER = 30.0  # the Cellpose GUI's diameter when none is known
SEG_UINT16_LIMIT = 2 ** 16 - 1  # _seg.npy masks are uint16 below this (cellpose.io's rule)
IMAGEJ_UINT16_MAX = 2 ** 16 - 1  # ImageJ reads uint8, uint16 and float32 only (tifffile)
IMAGEJ_FLOAT_MAX = 2 ** 24  # float32 holds every integer up to this exactly
UNIT = "um"  # the unit of voxel_size, written to the ImageJ file
FORMATS_3D = ("masks", "csv", "seg")  # what export_all writes for a volume
DZ_VIEW_RANGE = 10.0  # the GUI's dZ view maps network-scale dZ in [-10, 10] to uint8 (cellpose.io)


# --- checks -----------------------------------------------------------------------------
def _voxel_size(voxel_size):
    """``(dz, dy, dx)`` as floats, or None; ValueError naming the value otherwise."""
    if voxel_size is None:
        return None
    try:
        out = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"voxel_size must be three finite positive numbers (dz, dy, dx) in "
                         f"{UNIT}; got {voxel_size!r}")
    return out


def _labels_and_image_3d(labels, image, channel_axis):
    """Checked (Z, Y, X) labels and the image as a (Z, Y, X, C) view (or None)."""
    labels = check_labels(labels, ndim=3)
    if image is None:
        return labels, None
    arr = np.asarray(image)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"image must be a real numeric array; got dtype {arr.dtype}")
    if arr.ndim == 3 and channel_axis is None:
        arr = arr[..., None]
    elif arr.ndim == 4:
        axis = -1 if channel_axis is None else channel_axis
        if not -4 <= axis < 4:
            raise ValueError(f"channel_axis={channel_axis} is out of range for shape {arr.shape}")
        arr = np.moveaxis(arr, axis, -1)
    if arr.ndim != 4 or arr.shape[:3] != labels.shape:
        raise ValueError(f"image of shape {np.shape(image)} (channel_axis={channel_axis}) does "
                         f"not match labels of shape {labels.shape}: expected (Z, Y, X) or "
                         f"(Z, Y, X, C) with channel_axis")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"image contains {int((~np.isfinite(arr)).sum())} NaN or inf values")
    return labels, arr


# --- masks ------------------------------------------------------------------------------
def _imagej_dtype(labels):
    """uint16 up to 65535 labels, float32 (exact integers) up to 2**24; else ValueError."""
    top = int(labels.max(initial=0))
    if top <= IMAGEJ_UINT16_MAX:
        return np.uint16
    if top <= IMAGEJ_FLOAT_MAX:
        return np.float32
    raise ValueError(f"label ids up to {top} do not fit an ImageJ TIFF (uint16, or float32 up "
                     f"to {IMAGEJ_FLOAT_MAX}); renumber them first (cellpose_nb.labels.renumber)")


def write_masks_tif_3d(path, labels, *, voxel_size=None, overwrite=False):
    """Labels as an ImageJ hyperstack TIFF, axes ZYX, that Fiji opens as a z-stack.

    uint16 when every label is at most 65535, else float32 (ImageJ reads no
    uint32), exact up to 2**24 labels.  Uncompressed: ImageJ hyperstacks have
    no compression.

    Parameters
    ----------
    path : str or Path
    labels : ndarray (Z, Y, X) of int
    voxel_size : (dz, dy, dx), optional
        In micrometres: written as ImageJ's ``spacing`` and ``unit`` and the
        X/Y resolution tags (pixels per micrometre).
    overwrite : bool

    Examples
    --------
    >>> import tempfile, tifffile
    >>> lab = np.zeros((3, 4, 5), int); lab[1, 1:3, 1:4] = 7
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_masks_tif_3d(f"{tmp}/a.tif", lab, voxel_size=(2, .5, .5))
    ...     with tifffile.TiffFile(p) as f:
    ...         f.series[0].axes, f.asarray().dtype, f.imagej_metadata["spacing"]
    ('ZYX', dtype('uint16'), 2.0)
    """
    return write_file(path, _masks_job_3d(labels, voxel_size), overwrite=overwrite)


def _masks_job_3d(labels, voxel_size=None):
    import tifffile

    labels = check_labels(labels, ndim=3)
    voxel = _voxel_size(voxel_size)
    data = labels.astype(_imagej_dtype(labels))
    metadata, extra = {"axes": "ZYX"}, {}
    if voxel is not None:
        dz, dy, dx = voxel
        metadata.update(spacing=dz, unit=UNIT)
        extra["resolution"] = (1.0 / dx, 1.0 / dy)
    return lambda tmp: tifffile.imwrite(tmp, data, imagej=True, metadata=metadata, **extra)


# --- per-cell table ---------------------------------------------------------------------
CSV_COLUMNS_3D = ("label", "volume", "centroid_z", "centroid_row", "centroid_col",
                  "bbox_z0", "bbox_row0", "bbox_col0", "bbox_z1", "bbox_row1", "bbox_col1")
CSV_COLUMNS_UM = ("volume_um3", "equivalent_diameter_um")  # with voxel_size only
_INT_COLUMNS = {"label", "volume", *CSV_COLUMNS_3D[5:]}


def cell_table_3d(labels, image=None, *, voxel_size=None, channel_axis=None):
    """One row per cell of a volume: label, volume, centroid, bounding box, mean intensities.

    Parameters
    ----------
    labels : ndarray (Z, Y, X) of int
    image : ndarray (Z, Y, X) or (Z, Y, X, C), optional
        Adds ``mean_intensity_ch0`` ... ``mean_intensity_ch{C-1}`` (raw values).
    voxel_size : (dz, dy, dx), optional
        In micrometres; adds ``volume_um3`` and ``equivalent_diameter_um`` (of
        the sphere of that volume).
    channel_axis : int, optional
        Channel axis of a 4-D ``image`` (default: last).

    Returns
    -------
    list of dict
        In label order.  ``volume`` in voxels, centroids in (z, row, col) voxel
        coordinates, bounding boxes as ``bbox_z0 <= z < bbox_z1`` (likewise rows
        and cols), the column names of :func:`cellpose_nb.export.cell_table`.

    Examples
    --------
    >>> lab = np.zeros((4, 6, 6), int); lab[1:3, 2:4, 1:5] = 5
    >>> row, = cell_table_3d(lab, np.full(lab.shape, 2.0), voxel_size=(2.0, 0.5, 0.5))
    >>> [row[k] for k in ("volume", "centroid_z", "bbox_col1", "volume_um3", "mean_intensity_ch0")]
    [16, 1.5, 5, 8.0, 2.0]
    """
    return _rows(_table_columns(labels, image, voxel_size, channel_axis))


def _rows(columns):
    return [{k: (int(v[n]) if k in _INT_COLUMNS else float(v[n])) for k, v in columns.items()}
            for n in range(len(columns["label"]))]


def _table_columns(labels, image, voxel_size, channel_axis):
    """{column name: array over the cells}: :func:`cell_table_3d` by columns."""
    from skimage.measure import regionprops_table

    labels, chans = _labels_and_image_3d(labels, image, channel_axis)
    voxel = _voxel_size(voxel_size)
    props = ("label", "area", "centroid", "bbox") + (() if chans is None else ("intensity_mean",))
    table = regionprops_table(labels, intensity_image=chans, properties=props)
    columns = {"label": table["label"], "volume": table["area"],
               **{name: table[f"centroid-{k}"] for k, name in enumerate(CSV_COLUMNS_3D[2:5])},
               **{name: table[f"bbox-{k}"] for k, name in enumerate(CSV_COLUMNS_3D[5:])}}
    if voxel is not None:
        columns["volume_um3"] = table["area"] * math.prod(voxel)
        columns["equivalent_diameter_um"] = np.cbrt(6.0 * columns["volume_um3"] / np.pi)
    for c in range(0 if chans is None else chans.shape[-1]):
        columns[f"mean_intensity_ch{c}"] = table[f"intensity_mean-{c}"]
    return columns


def write_cells_csv_3d(path, labels, image=None, *, voxel_size=None, channel_axis=None,
                       overwrite=False):
    """Write :func:`cell_table_3d` as CSV (header row even when there are no cells).

    Examples
    --------
    >>> import tempfile
    >>> lab = np.zeros((2, 3, 3), int); lab[0, :2, :2] = 1
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_cells_csv_3d(f"{tmp}/c.csv", lab).read_text().splitlines()[1]
    '1,4,0.0,0.5,0.5,0,0,0,1,2,2'
    """
    return write_file(path, _csv_job_3d(labels, image, voxel_size, channel_axis),
                      overwrite=overwrite)


def _csv_job_3d(labels, image, voxel_size=None, channel_axis=None):
    columns = _table_columns(labels, image, voxel_size, channel_axis)
    fields, rows = list(columns), _rows(columns)  # the header is there even without cells

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return write


# --- Cellpose GUI -----------------------------------------------------------------------
def flow_circ(dp):
    """Cellpose's ``plot.dx_to_circ``: (K, ...) flows at network scale -> (..., 3) uint8.

    The magnitude over all K components, percentile-normalised over the whole
    array; the hue from the angle of components 0 and 1 (in 3D Cellpose's
    (d_z, d_row) pair, as it does).

    Examples
    --------
    >>> flow_circ(np.ones((3, 2, 4, 5), np.float32)).shape
    (2, 4, 5, 3)
    """
    dp = np.asarray(dp, np.float32)
    mag = np.sqrt((dp ** 2).sum(0))
    flat = normalize_percentile(mag.reshape(-1, mag.shape[-1]))  # 2-D: one set of percentiles
    mag = 255 * np.clip(flat.reshape(mag.shape), 0, 1) / 2
    angles = np.arctan2(dp[1], dp[0]) + np.pi
    shifts = (0, 2 * np.pi / 3, 4 * np.pi / 3)
    return np.stack([np.clip(mag * (np.cos(angles + s) + 1), 0, 255).astype(np.uint8)
                     for s in shifts], -1)


def _prob_uint8(prob):
    """Cellprob logits -> uint8 by the percentiles of the whole array (cellpose.io's view)."""
    flat = normalize_percentile(prob.reshape(-1, prob.shape[-1]))
    return (np.clip(flat.reshape(prob.shape), 0, 1) * 255).astype(np.uint8)


def _seg_filename(path, filename):
    """The image file name a _seg.npy records: given, or ``path`` without ``_seg.npy``."""
    name = str(path)
    if filename is not None:
        return filename
    return name[:-len(SEG_SUFFIX)] if name.endswith(SEG_SUFFIX) else str(Path(name).with_suffix(""))


def write_seg_npy_3d(path, image, labels, flows=None, *, cellprob=None, diameter=None,
                     chan_choose=(0, 0), filename=None, channel_axis=None, overwrite=False):
    """A Cellpose GUI ``<name>_seg.npy`` for a volume (``cellpose.io.masks_flows_to_seg``, 3D).

    Open the (Z, Y, X) image ``<name>.tif`` in the GUI with "load 3D"; it reads
    this file from the same folder.

    Parameters
    ----------
    path : str or Path
        Should end in ``_seg.npy``.
    image : ndarray (Z, Y, X) or (Z, Y, X, C), or None
        Only checked against ``labels`` (the GUI reads the image file itself).
    labels : ndarray (Z, Y, X) of int
    flows : ndarray (3, Z, Y, X) or (2, Z, Y, X), optional
        Unit-scale flows (d_z, d_row, d_col), or (d_row, d_col) per slice from
        stitching; stored at network scale (x FLOW_SCALE).  The GUI's dZ view
        is zeros for 2-component flows, as the GUI itself does after stitching.
    cellprob : ndarray (Z, Y, X), optional
        Logits; zeros if flows are given without it.
    diameter : float, optional
        Default 30, Cellpose's.
    chan_choose : (int, int)
        Channels in Cellpose's convention (0 = gray, 1 = red, 2 = green, 3 = blue).
    filename : str, optional
        The image file name recorded; default: ``path`` without ``_seg.npy``.
    channel_axis : int, optional
        Channel axis of a 4-D ``image``.

    Notes
    -----
    Outlines are drawn slice by slice (as the GUI shows them).  Cellpose's own
    2.5D flows are the *sum* of two estimates per component (about twice the
    network scale); here they are stored at the network scale, as in 2D.

    Examples
    --------
    >>> import tempfile
    >>> lab = np.zeros((4, 10, 10), int); lab[1:3, 2:8, 2:8] = 1
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_seg_npy_3d(f"{tmp}/a_seg.npy", None, lab)
    ...     dat = np.load(p, allow_pickle=True).item()
    >>> dat["masks"].shape, dat["outlines"][1, 2, 2:8].tolist()
    ((4, 10, 10), [1, 1, 1, 1, 1, 1])
    """
    job = _seg_job_3d(path, image, labels, flows, cellprob=cellprob, diameter=diameter,
                      chan_choose=chan_choose, filename=filename, channel_axis=channel_axis)
    return write_file(path, job, overwrite=overwrite)


def _seg_job_3d(path, image, labels, flows=None, *, cellprob=None, diameter=None,
                chan_choose=(0, 0), filename=None, channel_axis=None):
    from skimage.segmentation import find_boundaries

    labels, _ = _labels_and_image_3d(labels, image, channel_axis)
    # per slice, padded so that a cell cut by the volume's side is outlined there (as cv2 does)
    rims = [find_boundaries(np.pad(s, 1), mode="inner")[1:-1, 1:-1] for s in labels]
    outlines = labels * np.stack(rims) if len(rims) else np.zeros_like(labels)
    if flows is None:
        flow_list = [[], [], [], [], [[]]]  # what the GUI itself uses when there are no flows
    else:
        dp = FLOW_SCALE * np.asarray(flows, np.float32)
        if dp.shape not in ((3, *labels.shape), (2, *labels.shape)):
            raise ValueError(f"flows must have shape (3, {', '.join(map(str, labels.shape))}) "
                             f"or (2, ...) for stitched slices; got {dp.shape}")
        prob = (np.zeros(labels.shape, np.float32) if cellprob is None
                else np.asarray(cellprob, np.float32))
        if prob.shape != labels.shape:
            raise ValueError(f"cellprob shape {prob.shape} does not match labels {labels.shape}")
        if not (np.isfinite(dp).all() and np.isfinite(prob).all()):
            raise ValueError("flows and cellprob must be finite (no NaN or inf)")
        dz_view = (np.zeros(labels.shape, np.uint8) if len(dp) == 2 else  # the GUI's own
                   np.clip(dp[0] / DZ_VIEW_RANGE * 127 + 127, 0, 255).astype(np.uint8))
        flow_list = [flow_circ(dp), _prob_uint8(prob), dz_view, [],
                     np.concatenate([dp, prob[None]])]
    dtype = np.uint16 if outlines.max(initial=0) < SEG_UINT16_LIMIT else np.uint32
    dat = {
        "outlines": outlines.astype(dtype),
        "masks": labels.astype(dtype),
        "chan_choose": [int(c) for c in chan_choose],
        "ismanual": np.zeros(int(labels.max(initial=0)), bool),
        "filename": _seg_filename(path, filename),
        "flows": flow_list,
        "diameter": GUI_DIAMETER if diameter is None else float(diameter),
    }

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(dat, dtype=object), allow_pickle=True)

    return write
