"""Write segmentation results for other tools: TIFF masks, outline PNGs, per-cell CSV,
ImageJ/Fiji ROI sets and the Cellpose GUI's ``_seg.npy``.

Every writer refuses to replace an existing file unless ``overwrite=True``
(FileExistsError naming the path) and writes through :mod:`cellpose_nb.atomic`,
so an interrupted run leaves either the old file or the new one, never half of
one.  :func:`export_all` writes one image's results in every format, all or
nothing: every result is computed first, then every file written to a
temporary, and only then are they renamed.

NumPy layer: no torch; tifffile, roifile and skimage are imported inside the
functions that need them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cellpose_nb.atomic import _refuse_existing, write_file, write_files
from cellpose_nb.data.files import SEG_SUFFIX, UINT16_LIMIT
from cellpose_nb import export3d as E3  # export_all writes volumes with its writers
from cellpose_nb.export3d import GUI_DIAMETER, SEG_UINT16_LIMIT, flow_circ  # shared with 3D
from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.labels import check_labels
from cellpose_nb.normalize import move_channels_last, normalize_percentile

__all__ = ["write_masks_tif", "write_outlines_png", "cell_table", "write_cells_csv",
           "outline_polygons", "write_imagej_rois", "write_seg_npy", "export_all",
           "FORMATS", "SUFFIXES"]

OUTLINE_COLOR = (255, 0, 0)  # RGB of the outlines drawn by write_outlines_png
CONTOUR_LEVEL = 0.5  # iso-level of find_contours on a 0/1 object mask
IMAGEJ_PIXEL_CENTRE = 0.5  # ImageJ's pixel (x, y) spans [x, x+1): its centre is at x + 0.5
SUFFIXES = {  # format -> file name suffix used by export_all
    "masks": "_masks.tif",
    "outlines": "_outlines.png",
    "csv": "_cells.csv",
    "rois": "_rois.zip",
    "seg": SEG_SUFFIX,
}
FORMATS = tuple(SUFFIXES)
#: export_all refuses label ids above this that are also above 4 x the pixel count: per-id
#: tables (regionprops, the GUI's ``ismanual``) would take memory in proportion to the id
MAX_SPARSE_ID = 2 ** 24


def _labels_and_image(labels, image, channel_axis):
    """Checked labels and the image as (H, W, C) of the same H, W (or None)."""
    labels = check_labels(labels)
    if image is None:
        return labels, None
    chans = move_channels_last(np.asarray(image), channel_axis=channel_axis)
    if chans.shape[:2] != labels.shape:
        raise ValueError(f"image of shape {np.shape(image)} (channel_axis={channel_axis}) does "
                         f"not match labels of shape {labels.shape}")
    return labels, chans


# --- masks ------------------------------------------------------------------------------
def _mask_dtype(labels):
    return np.uint16 if labels.size == 0 or labels.max() < UINT16_LIMIT else np.uint32


def write_masks_tif(path, labels, *, overwrite=False):
    """Labels as a zlib-compressed TIFF, uint16 when every label is below 65536, else uint32.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_masks_tif(f"{tmp}/a_masks.tif", np.eye(3, dtype=int))
    ...     tifffile.imread(p).dtype
    dtype('uint16')
    """
    return write_file(path, _masks_job(labels), overwrite=overwrite)


def _masks_job(labels):
    import tifffile

    labels = check_labels(labels)
    if labels.size and int(labels.max()) > np.iinfo(np.uint32).max:  # would wrap around
        raise ValueError(f"label ids up to {int(labels.max())} do not fit a uint32 masks TIFF; "
                         "renumber them first (cellpose_nb.labels.renumber)")
    data = labels.astype(_mask_dtype(labels))
    return lambda tmp: tifffile.imwrite(tmp, data, compression="zlib")


# --- outlines ---------------------------------------------------------------------------
def _display_rgb(image, shape):
    """uint8 (H, W, 3): grayscale, or the first (up to three) channels as R, G, B."""
    if image is None:
        return np.zeros((*shape, 3), np.uint8)
    chans = image[..., :3]
    norm = normalize_percentile(chans, channel_axis=-1)
    rgb = np.zeros((*shape, 3), np.float32)
    if chans.shape[-1] == 1:
        rgb[...] = norm
    else:
        rgb[..., :chans.shape[-1]] = norm
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def write_outlines_png(path, image, labels, *, channel_axis=None, color=OUTLINE_COLOR,
                       overwrite=False):
    """The image (percentile-normalised) with the cell outlines drawn over it, as an RGB PNG.

    Parameters
    ----------
    path : str or Path
    image : ndarray (H, W) or (H, W, C), or None for a black background
        Grayscale, or the first three channels shown as red, green, blue.
    labels : ndarray (H, W) of int
    channel_axis : int, optional
    color : (int, int, int)
        RGB of the outline pixels (``skimage.segmentation.find_boundaries``, inner).

    Examples
    --------
    >>> import tempfile, skimage.io
    >>> lab = np.zeros((20, 20), int); lab[5:15, 5:15] = 1
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     rgb = skimage.io.imread(write_outlines_png(f"{tmp}/a.png", lab * 1.0, lab))
    >>> rgb.shape, rgb.dtype, rgb[5, 10].tolist(), rgb[10, 10].tolist()
    ((20, 20, 3), dtype('uint8'), [255, 0, 0], [255, 255, 255])
    """
    return write_file(path, _outlines_job(image, labels, channel_axis, color),
                             overwrite=overwrite)


def _outlines_job(image, labels, channel_axis, color=OUTLINE_COLOR):
    import skimage.io
    from skimage.segmentation import find_boundaries

    labels, chans = _labels_and_image(labels, image, channel_axis)
    rgb = _display_rgb(chans, labels.shape)
    rgb[find_boundaries(labels, mode="inner")] = np.asarray(color, np.uint8)
    return lambda tmp: skimage.io.imsave(tmp, rgb, check_contrast=False)


# --- per-cell table ---------------------------------------------------------------------
CSV_COLUMNS = ("label", "area", "centroid_row", "centroid_col", "equivalent_diameter")


def cell_table(labels, image=None, *, channel_axis=None):
    """One row per cell: label, area, centroid, equivalent diameter, mean intensities.

    Parameters
    ----------
    labels : ndarray (H, W) of int
    image : ndarray (H, W) or (H, W, C), optional
        Adds ``mean_intensity_ch0`` ... ``mean_intensity_ch{C-1}`` (raw values).
    channel_axis : int, optional

    Returns
    -------
    list of dict
        In label order; areas in pixels, centroids in (row, col) pixel
        coordinates, ``equivalent_diameter`` of the disc of the same area.

    Examples
    --------
    >>> lab = np.zeros((10, 10), int); lab[2:4, 2:6] = 3
    >>> cell_table(lab, np.full((10, 10), 2.0))
    [{'label': 3, 'area': 8, 'centroid_row': 2.5, 'centroid_col': 3.5, 'equivalent_diameter': 3.1915382432114616, 'mean_intensity_ch0': 2.0}]
    """
    from skimage.measure import regionprops_table

    labels, chans = _labels_and_image(labels, image, channel_axis)
    props = regionprops_table(labels, properties=("label", "area", "centroid",
                                                  "equivalent_diameter_area"))
    columns = {"label": props["label"], "area": props["area"],
               "centroid_row": props["centroid-0"], "centroid_col": props["centroid-1"],
               "equivalent_diameter": props["equivalent_diameter_area"]}
    if chans is not None:
        for c in range(chans.shape[-1]):
            means = regionprops_table(labels, intensity_image=chans[..., c].astype(np.float64),
                                      properties=("intensity_mean",))["intensity_mean"]
            columns[f"mean_intensity_ch{c}"] = means
    names = list(columns)
    return [{k: (int(columns[k][n]) if k in ("label", "area") else float(columns[k][n]))
             for k in names} for n in range(len(props["label"]))]


def write_cells_csv(path, labels, image=None, *, channel_axis=None, overwrite=False):
    """Write :func:`cell_table` as CSV (header row even when there are no cells).

    Examples
    --------
    >>> import tempfile
    >>> lab = np.zeros((10, 10), int); lab[2:4, 2:6] = 1
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_cells_csv(f"{tmp}/c.csv", lab).read_text().splitlines()
    ['label,area,centroid_row,centroid_col,equivalent_diameter', '1,8,2.5,3.5,3.1915382432114616']
    """
    return write_file(path, _csv_job(labels, image, channel_axis), overwrite=overwrite)


def _csv_job(labels, image, channel_axis):
    rows = cell_table(labels, image, channel_axis=channel_axis)
    _, chans = _labels_and_image(labels, image, channel_axis)
    n_chan = 0 if chans is None else chans.shape[-1]
    fields = [*CSV_COLUMNS, *(f"mean_intensity_ch{c}" for c in range(n_chan))]

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return write


# --- ImageJ ROIs ------------------------------------------------------------------------
def outline_polygons(labels):
    """One closed outline per cell, as (label, (N, 2) array of (row, col)) pairs.

    The longest iso-line at 0.5 of the object's 0/1 mask (padded by one pixel,
    so that objects touching the border close), in pixel-centre coordinates.

    Examples
    --------
    >>> lab = np.zeros((8, 8), int); lab[2:5, 3:6] = 7
    >>> [(k, p.shape[1]) for k, p in outline_polygons(lab)]
    [(7, 2)]
    """
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    labels = check_labels(labels)
    out = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.pad(labels[box] == index, 1).astype(np.float32)
        contour = max(find_contours(mask, CONTOUR_LEVEL), key=len)
        out.append((index, contour + [box[0].start - 1, box[1].start - 1]))
    return out


def write_imagej_rois(path, labels, *, overwrite=False):
    """An ImageJ/Fiji ROI set (.zip): one sub-pixel polygon per cell, named by its label.

    Open it in Fiji with the ROI Manager (More > Open...) over the image.

    Examples
    --------
    >>> import tempfile, roifile
    >>> lab = np.zeros((30, 30), int); lab[2:10, 3:9] = 1; lab[15:25, 10:20] = 2
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     rois = roifile.roiread(write_imagej_rois(f"{tmp}/r.zip", lab))
    >>> [r.name for r in rois]
    ['1', '2']
    """
    return write_file(path, _rois_job(labels), overwrite=overwrite)


def _rois_job(labels):
    import roifile

    rois = []
    for label, polygon in outline_polygons(labels):
        xy = polygon[:, ::-1] + IMAGEJ_PIXEL_CENTRE
        roi = roifile.ImagejRoi.frompoints(xy.astype(np.float32), name=str(label))
        roi.roitype = roifile.ROI_TYPE.POLYGON
        rois.append(roi)

    def write(tmp):
        if rois:
            roifile.roiwrite(tmp, rois, mode="w")
        else:  # a valid, empty zip
            import zipfile

            zipfile.ZipFile(tmp, "w").close()

    return write


# --- Cellpose GUI -----------------------------------------------------------------------
def write_seg_npy(path, image, labels, flows=None, *, cellprob=None, diameter=None,
                  chan_choose=(0, 0), filename=None, channel_axis=None, overwrite=False):
    """A Cellpose GUI ``<name>_seg.npy`` (the dict of ``cellpose.io.masks_flows_to_seg``).

    The GUI opens it automatically when it opens the image ``<name>.<ext>``
    from the same folder.

    Parameters
    ----------
    path : str or Path
        Should end in ``_seg.npy``.
    image : ndarray (H, W) or (H, W, C), or None
        Only checked against ``labels`` (the GUI reads the image file itself).
    labels : ndarray (H, W) of int
    flows : ndarray (2, H, W), optional
        Unit-scale flows, e.g. ``Segmentation.flows``; stored at network scale
        (x FLOW_SCALE) as Cellpose does.  Without flows the GUI shows masks only.
    cellprob : ndarray (H, W), optional
        Logits; zeros if flows are given without it.
    diameter : float, optional
        Stored as ``diameter`` (default 30, Cellpose's).
    chan_choose : (int, int)
        Channels in Cellpose's convention (0 = gray, 1 = red, 2 = green, 3 = blue).
    filename : str, optional
        The image file name recorded in the file; default: ``path`` without ``_seg.npy``.
    channel_axis : int, optional
        Channel axis of a 3-D ``image``.

    Examples
    --------
    >>> import tempfile
    >>> lab = np.zeros((20, 20), int); lab[5:15, 5:15] = 1
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_seg_npy(f"{tmp}/a_seg.npy", lab * 1.0, lab)
    ...     sorted(np.load(p, allow_pickle=True).item())
    ['chan_choose', 'diameter', 'filename', 'flows', 'ismanual', 'masks', 'outlines']
    """
    job = _seg_job(path, image, labels, flows, cellprob=cellprob, diameter=diameter,
                   chan_choose=chan_choose, filename=filename, channel_axis=channel_axis)
    return write_file(path, job, overwrite=overwrite)


def _seg_job(path, image, labels, flows=None, *, cellprob=None, diameter=None,
             chan_choose=(0, 0), filename=None, channel_axis=None):
    from skimage.segmentation import find_boundaries

    labels, _ = _labels_and_image(labels, image, channel_axis)
    path = Path(path)
    if filename is None:
        name = str(path)
        filename = name[:-len(SEG_SUFFIX)] if name.endswith(SEG_SUFFIX) else str(path.with_suffix(""))
    outlines = labels * find_boundaries(labels, mode="inner")
    if flows is None:
        flow_list = [[], [], [], [], [[]]]  # what the GUI itself uses when there are no flows
    else:
        dp = FLOW_SCALE * np.asarray(flows, np.float32)
        if dp.shape != (2, *labels.shape):
            raise ValueError(f"flows must have shape (2, {labels.shape[0]}, {labels.shape[1]}); "
                             f"got {dp.shape}")
        prob = np.zeros(labels.shape, np.float32) if cellprob is None else np.asarray(cellprob, np.float32)
        if prob.shape != labels.shape:
            raise ValueError(f"cellprob shape {prob.shape} does not match labels {labels.shape}")
        prob8 = (np.clip(normalize_percentile(prob), 0, 1) * 255).astype(np.uint8)
        flow_list = [flow_circ(dp)[None], prob8[None],
                     np.zeros((1, *labels.shape, 3), np.uint8),  # a 2-D image's placeholder
                     [], np.concatenate([dp, prob[None]])]
    dtype = np.uint16 if outlines.max(initial=0) < SEG_UINT16_LIMIT else np.uint32
    dat = {
        "outlines": outlines.astype(dtype),
        "masks": labels.astype(dtype),
        "chan_choose": [int(c) for c in chan_choose],
        "ismanual": np.zeros(int(labels.max(initial=0)), bool),
        "filename": filename,
        "flows": flow_list,
        "diameter": GUI_DIAMETER if diameter is None else float(diameter),
    }

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(dat, dtype=object), allow_pickle=True)

    return write


# --- everything -------------------------------------------------------------------------
def export_all(out_dir, name, image, result, *, channel_axis=None, overwrite=False,
               formats=None, before_rename=None, voxel_size=None):
    """Write one image's results as ``<name>_masks.tif``, ``_outlines.png``, ``_cells.csv``,
    ``_rois.zip`` and ``_seg.npy`` in ``out_dir``, all or nothing (a volume's: the
    ``_masks.tif`` ImageJ hyperstack, ``_cells.csv`` and ``_seg.npy`` of :mod:`~cellpose_nb.export3d`).

    Every target path is checked and every result computed before anything is
    written, so without ``overwrite`` an existing file means nothing is written
    at all; then all files are written to temporaries and only then renamed, so
    a failure (a full disk, an interrupt) leaves none of this call's files.

    Parameters
    ----------
    out_dir : str or Path
        Created if needed.
    name : str
        Base name of the files (e.g. the image file's stem).
    image : ndarray (H, W) or (H, W, C), or None
    result : Segmentation or ndarray
        Anything with ``labels`` (and optionally ``flows``, ``cellprob``,
        ``diameter``), or a label image.
    channel_axis : int, optional
    overwrite : bool
    formats : sequence of str, optional
        A subset of ``FORMATS`` (default: all).  For (Z, Y, X) labels, a subset of
        ``export3d.FORMATS_3D`` (masks, csv, seg: the :mod:`~cellpose_nb.export3d`
        writers; default: all three).
    before_rename : callable, optional
        Called with ``{target path: temporary path}`` once every temporary is
        written, before the first rename (``cellpose-nb segment`` notes there
        that the files are its own).
    voxel_size : (dz, dy, dx), optional
        Micrometres, for 3D labels only (see :func:`~cellpose_nb.export3d.write_masks_tif_3d`).

    Returns
    -------
    list of Path
        In the order of ``formats``.

    Raises
    ------
    FileExistsError
        A target exists and ``overwrite`` is false.
    ValueError
        Unknown formats; labels that are empty, do not match the image, or
        have huge sparse ids (see ``MAX_SPARSE_ID``).
    OSError
        Writing failed; the message names the file and the folder.

    Examples
    --------
    >>> import tempfile
    >>> lab = np.zeros((20, 20), int); lab[5:15, 5:15] = 1
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     [p.name for p in export_all(tmp, "img", lab * 1.0, lab, formats=("masks", "csv"))]
    ['img_masks.tif', 'img_cells.csv']
    """
    labels = result if isinstance(result, np.ndarray) else result.labels
    volume = np.ndim(labels) == 3
    allowed = E3.FORMATS_3D if volume else FORMATS
    formats = allowed if formats is None else formats
    unknown = [f for f in formats if f not in allowed]
    if unknown:
        raise ValueError(f"unknown formats {unknown} for {np.ndim(labels)}-D labels; expected "
                         f"some of {list(allowed)}")
    if voxel_size is not None and not volume:
        raise ValueError(f"voxel_size={voxel_size!r} is for 3D labels; got shape {np.shape(labels)}")
    E3._voxel_size(voxel_size)  # fail before writing
    check = E3._labels_and_image_3d if volume else _labels_and_image
    labels, chans = check(labels, image, channel_axis)  # fail before writing
    out_dir = Path(out_dir)
    what = f"labels for {out_dir / name}_*"
    if labels.size == 0:
        raise ValueError(f"{what} are empty (shape {labels.shape}): nothing to export")
    top = int(labels.max())
    if top > MAX_SPARSE_ID and top > 4 * labels.size:
        raise ValueError(f"{what} have ids up to {top} in only {labels.size} pixels (per-id "
                         "tables would not fit in memory); renumber them first "
                         "(cellpose_nb.labels.renumber)")
    targets = {f: out_dir / f"{name}{SUFFIXES[f]}" for f in formats}
    _refuse_existing(targets.values(), overwrite)
    flows = getattr(result, "flows", None)
    jobs = {  # each computes its file's content now and returns the function that writes it
        "masks": lambda p: E3._masks_job_3d(labels, voxel_size) if volume else _masks_job(labels),
        "outlines": lambda p: _outlines_job(chans, labels, -1),
        "csv": lambda p: (E3._csv_job_3d(labels, chans, voxel_size, -1) if volume
                          else _csv_job(labels, chans, -1)),
        "rois": lambda p: _rois_job(labels),
        "seg": lambda p: (E3._seg_job_3d if volume else _seg_job)(
            p, chans, labels, flows, channel_axis=-1, cellprob=getattr(result, "cellprob", None),
            diameter=getattr(result, "diameter", None)),
    }
    return write_files({p: jobs[f](p) for f, p in targets.items()},
                                 overwrite=overwrite, before_rename=before_rename)
