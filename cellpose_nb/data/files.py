"""Single files: images (TIFF, PNG, JPEG) and label images (TIFF, PNG, the GUI's ``_seg.npy``).

:func:`read_image`, :func:`read_labels` and :func:`write_labels`; a
:class:`Sample` is one image read from disk with its labels.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from cellpose_nb.data.safe_npy import UnsafePickleError, load_npy
from cellpose_nb.labels import check_labels

__all__ = ["Sample", "read_image", "read_labels", "write_labels"]

TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_EXTENSIONS = (".tif", ".tiff", ".png")  # lossless only
SEG_SUFFIX = "_seg.npy"  # the Cellpose GUI's pickled results: <image base>_seg.npy
#: a TIFF that says its image is larger is taken for a damaged one (a flipped bit
#: in its header can make a 1 MB file claim gigabytes)
MAX_TIFF_BYTES = 2**32
UINT16_LIMIT = 2**16  # labels below this are stored as uint16, else uint32


@dataclass(frozen=True, eq=False)
class Sample:
    """One image read from disk, with its labels when there are any.

    Attributes
    ----------
    name : str
        The file name without the image suffix and extension.
    image : ndarray
        As stored: (H, W) or (H, W, C), original dtype.
    labels : ndarray or None
        Integer (H, W) labels as stored (not relabelled), or None.
    path : pathlib.Path
        Path of the image file.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray | None
    path: Path


def _check_file(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as stored (TIFF via tifffile, PNG/JPEG via Pillow).

    Parameters
    ----------
    path : str or pathlib.Path
        A .tif, .tiff, .png, .jpg or .jpeg file.

    Returns
    -------
    ndarray
        The pixels, in the file's dtype and layout.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unsupported extension, or the file cannot be decoded (the message
        names the file and the reason).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     tifffile.imwrite(f"{tmp}/a_img.tif", np.ones((4, 5), np.uint8))
    ...     read_image(f"{tmp}/a_img.tif").shape
    (4, 5)
    """
    path = _check_file(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"cannot read {path}: extension {ext!r} is not one of {IMAGE_EXTENSIONS}")
    if ext in TIFF_EXTENSIONS:
        return _read_tiff(path)
    try:
        import imageio.v3 as iio  # lazy: only needed for PNG/JPEG

        return iio.imread(path, plugin="pillow")
    except Exception as exc:  # tifffile / Pillow raise many types; name the file
        raise ValueError(f"cannot read {path}: {exc}") from exc


class _TiffLog(logging.Handler):
    """Collects tifffile's log records during one read, instead of printing them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.errors, self.warnings = [], []

    def emit(self, record):
        (self.errors if record.levelno >= logging.ERROR else self.warnings).append(record.getMessage())


def _read_tiff(path, *, allow_bool=False):
    """The first series of a TIFF, or a ValueError that calls a damaged file corrupt.

    tifffile logs what it finds wrong in a damaged file (hundreds of lines for
    one with a flipped header bit) and may still return an array, e.g. a huge
    one-bit image; its log is collected here, and any error in it, an empty or
    non-numeric image, or one larger than ``MAX_TIFF_BYTES`` is reported as a
    corrupt file, in one line.  A one-bit image is taken for a corrupt one
    unless ``allow_bool`` (a binary mask can be one; a microscope image is not).
    """
    def corrupt(reason):
        return ValueError(f"cannot read {path}: the TIFF file is corrupt or truncated ({reason})")

    log, logger = _TiffLog(), logging.getLogger("tifffile")
    logger.addHandler(log)
    propagate, logger.propagate = logger.propagate, False
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise corrupt("no image in it")
            series = tif.series[0]
            dtype, shape = np.dtype(series.dtype), tuple(series.shape)
            nbytes = math.prod(shape) * dtype.itemsize
            if dtype.kind not in ("uifb" if allow_bool else "uif") or 0 in shape:
                raise corrupt(f"it describes a {dtype} image of shape {shape}")
            if nbytes > MAX_TIFF_BYTES:
                raise corrupt(f"it describes a {nbytes / 2**30:.0f} GiB image of shape "
                              f"{shape}, more than {MAX_TIFF_BYTES / 2**30:.0f} GiB")
            data = series.asarray()
    except ValueError as exc:
        if str(exc).startswith(f"cannot read {path}"):
            raise
        raise corrupt(exc) from exc
    except Exception as exc:  # tifffile raises many types on damaged files
        raise corrupt(f"{type(exc).__name__}: {exc}") from exc
    finally:
        logger.removeHandler(log)
        logger.propagate = propagate
    if log.errors:
        raise corrupt(log.errors[0])
    if data.shape != shape:  # tifffile could not decode all of the pixels it announced
        raise corrupt(log.warnings[0] if log.warnings else
                      f"{data.shape} pixels read, {shape} announced")
    return data


def read_labels(path: str | os.PathLike, *, allow_pickle: bool = True) -> np.ndarray:
    """Read a label image: TIFF, PNG, or a Cellpose GUI ``_seg.npy``.

    Parameters
    ----------
    path : str or pathlib.Path
        A .tif, .tiff or .png label image, or a .npy file holding either an
        integer array or the Cellpose GUI's dict with key ``"masks"``.
    allow_pickle : bool
        ``_seg.npy`` files are pickled dicts.  They are unpickled with an
        allow-list (numpy arrays, dtypes, scalars, builtin containers: see
        :func:`cellpose_nb.data.safe_npy.load_npy`), so a crafted file is
        refused instead of running code; False refuses pickled files altogether.

    Returns
    -------
    ndarray
        Integer (H, W) labels as stored (not relabelled).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unreadable file, not integer, not 2-D, negative values, or no
        ``"masks"`` key; :class:`~cellpose_nb.data.safe_npy.UnsafePickleError`
        (a ValueError) for a pickle that asks for anything else.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(f"{tmp}/a_seg.npy", {"masks": np.eye(3, dtype=np.uint16)})
    ...     read_labels(f"{tmp}/a_seg.npy").dtype
    dtype('uint16')
    """
    path = _check_file(path)
    if path.suffix.lower() == ".npy":
        try:
            loaded = load_npy(path, allow_pickle=allow_pickle)
        except UnsafePickleError:
            raise
        except Exception as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        if loaded.dtype == object and loaded.shape == ():
            loaded = loaded.item()
            if not isinstance(loaded, dict) or "masks" not in loaded:
                raise ValueError(f"cannot read {path}: expected a dict with key 'masks'")
            loaded = np.asarray(loaded["masks"])
        return check_labels(loaded, source=path, keep_dtype=True)
    if path.suffix.lower() not in MASK_EXTENSIONS:
        allowed = MASK_EXTENSIONS + (".npy",)
        raise ValueError(f"cannot read labels {path}: extension {path.suffix!r} is not one of {allowed}")
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return check_labels(_read_tiff(path, allow_bool=True), source=path, keep_dtype=True)
    return check_labels(read_image(path), source=path, keep_dtype=True)


def write_labels(path: str | os.PathLike, labels: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write integer labels as a zlib-compressed TIFF.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination, ending in .tif or .tiff.
    labels : ndarray
        Integer (H, W) labels, >= 0. Stored as uint16 when the maximum is
        below 65536, else uint32.
    overwrite : bool
        Replace an existing file. By default an existing file is an error.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        Not a TIFF path, or ``labels`` are not valid labels.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_labels(f"{tmp}/a_masks.tif", np.eye(3, dtype=np.int64))
    ...     read_labels(p).dtype
    dtype('uint16')
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_EXTENSIONS:
        raise ValueError(f"write_labels writes TIFF; {path} should end in .tif or .tiff")
    labels = check_labels(labels, source="the array to write", keep_dtype=True)
    dtype = np.uint16 if labels.size == 0 or labels.max() < UINT16_LIMIT else np.uint32
    try:
        with open(path, "wb" if overwrite else "xb") as fh:
            tifffile.imwrite(fh, labels.astype(dtype, copy=False), compression="zlib")
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
    return path
