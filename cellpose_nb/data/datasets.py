"""The course data sets under ``shared/data`` and the sample images shipped with the package.

:func:`data_root` finds the data, :func:`dataset_index` reads an ``index.csv``,
:func:`load_dsb2018` and :func:`load_cil` load the nuclei and whole-cell sets,
:func:`load_sample` one of the small images in ``cellpose_nb/sample_data``.
"""

from __future__ import annotations

import csv
import importlib.resources
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cellpose_nb.data.files import Sample, read_image, read_labels
from cellpose_nb.data.folder import _natural_key, _read_pair

__all__ = ["data_root", "dataset_index", "load_dsb2018", "load_cil", "histology_to_gray",
           "SAMPLES", "load_sample"]

DATA_ENV = "CELLPOSE_NB_DATA"
DATA_RELATIVE = Path("shared") / "data"
DSB_MODALITIES = ("fluorescence", "brightfield", "histology")
_KEY_COLUMNS = ("id", "name")  # index columns that stay strings
_PACKAGE = importlib.resources.files("cellpose_nb")


def _package_folder() -> Path:
    """The folder of the package ``cellpose_nb`` (in an editable install, inside the repository)."""
    return Path(str(_PACKAGE)).resolve()


def data_root(*, required: bool = False) -> Path | None:
    """Find the folder holding the course data sets.

    Looked up in this order: ``$CELLPOSE_NB_DATA`` (an error if set to a
    missing folder); ``shared/data`` next to the repository (beside the
    folder holding the package); ``../shared/data`` and
    ``../../shared/data`` from the working directory (the repository root
    or its ``notebooks/``).

    Parameters
    ----------
    required : bool
        Raise instead of returning None when nothing is found.

    Returns
    -------
    pathlib.Path or None

    Examples
    --------
    >>> root = data_root()
    >>> root is None or root.is_dir()
    True
    """
    env = os.environ.get(DATA_ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{DATA_ENV} is set to {env!r}, which is not a folder")
        return root.resolve()
    candidates = [
        _package_folder().parent.parent / DATA_RELATIVE,
        Path.cwd().parent / DATA_RELATIVE,
        Path.cwd().parent.parent / DATA_RELATIVE,
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    if required:
        tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
        raise FileNotFoundError(f"course data not found: set {DATA_ENV} to the data folder (tried {tried})")
    return None


def _parse_index(rows, fieldnames):
    """Turn all-integer columns (except id/name) into ints."""
    for col in fieldnames:
        if col in _KEY_COLUMNS or not all(re.fullmatch(r"[+-]?\d+", r[col] or "") for r in rows):
            continue
        for r in rows:
            r[col] = int(r[col])
    return rows


def dataset_index(name: str, *, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Read ``<root>/<name>/index.csv`` into a list of dicts.

    Columns whose values are all integers become ``int`` (``id`` and
    ``name`` stay strings).

    Parameters
    ----------
    name : str
        Data set folder, e.g. "dsb2018" or "cil_mp6843".
    root : str or pathlib.Path, optional
        Data root; default :func:`data_root` (required).

    Returns
    -------
    list of dict

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     Path(tmp, "toy").mkdir()
    ...     _ = Path(tmp, "toy", "index.csv").write_text("id,h\\n007,5\\n")
    ...     dataset_index("toy", root=tmp)
    [{'id': '007', 'h': 5}]
    """
    root = data_root(required=True) if root is None else Path(root)
    path = root / name / "index.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no index for data set {name!r}: {path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    return _parse_index(rows, reader.fieldnames or [])


def _check_limit(limit):
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"limit must be None or an integer >= 0; got {limit!r}")


def _load_listed(folder, names):
    return [_read_pair(n, folder / f"{n}_img.tif", folder / f"{n}_masks.tif", False) for n in names]


def load_dsb2018(
    *, modality: str | None = None, limit: int | None = None, root: str | os.PathLike | None = None
) -> list[Sample]:
    """Load DSB2018 nuclei training images (``<root>/dsb2018/train``).

    Parameters
    ----------
    modality : {"fluorescence", "brightfield", "histology"}, optional
        Keep only this modality (see ``index.csv``); default all.
    limit : int, optional
        Load at most this many (the first, in sorted order of the hex id).
    root : str or pathlib.Path, optional
        Data root; default :func:`data_root` (required).

    Returns
    -------
    list of Sample
        uint8 images, (H, W) or (H, W, 3) for histology (see
        :func:`histology_to_gray`); uint16 labels.

    Examples
    --------
    >>> root = data_root()
    >>> have = root is not None and (root / "dsb2018" / "index.csv").is_file()
    >>> samples = load_dsb2018(modality="brightfield", limit=2) if have else []
    >>> all(s.labels.shape == s.image.shape[:2] for s in samples)
    True
    """
    if modality is not None and modality not in DSB_MODALITIES:
        raise ValueError(f"modality must be None or one of {DSB_MODALITIES}; got {modality!r}")
    _check_limit(limit)
    root = data_root(required=True) if root is None else Path(root)
    rows = dataset_index("dsb2018", root=root)
    ids = sorted(r["id"] for r in rows if modality in (None, r["modality"]))  # hex: plain order
    return _load_listed(root / "dsb2018" / "train", ids[:limit])


def load_cil(*, limit: int | None = None, root: str | os.PathLike | None = None) -> list[Sample]:
    """Load the CIL MP6843 whole-cell training images (``<root>/cil_mp6843/train``).

    Parameters
    ----------
    limit : int, optional
        Load at most this many (the first, in natural order of the name).
    root : str or pathlib.Path, optional
        Data root; default :func:`data_root` (required).

    Returns
    -------
    list of Sample
        uint8 images (520, 696, 2): channel 0 phalloidin (cytoplasm),
        channel 1 DAPI (nuclei); uint16 labels (520, 696).

    Examples
    --------
    >>> root = data_root()
    >>> have = root is not None and (root / "cil_mp6843" / "index.csv").is_file()
    >>> samples = load_cil(limit=1) if have else []
    >>> all(s.image.shape[:2] == s.labels.shape for s in samples)
    True
    """
    _check_limit(limit)
    root = data_root(required=True) if root is None else Path(root)
    names = sorted((r["name"] for r in dataset_index("cil_mp6843", root=root)), key=_natural_key)
    return _load_listed(root / "cil_mp6843" / "train", names[:limit])


def histology_to_gray(image: np.ndarray) -> np.ndarray:
    """Turn an RGB (H&E) image into one inverted gray channel: nuclei bright.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3) or (H, W, 4)
        RGB(A); integer dtypes are scaled to [0, 1], float is taken as [0, 1].
        An alpha channel is ignored.

    Returns
    -------
    ndarray of float32, shape (H, W)
        ``1 - rgb2gray(image)``.

    Examples
    --------
    >>> rgb = np.zeros((2, 2, 3), np.uint8)  # black: a dark nucleus
    >>> histology_to_gray(rgb)
    array([[1., 1.],
           [1., 1.]], dtype=float32)
    """
    from skimage.color import rgb2gray

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB(A) image of shape (H, W, 3|4); got shape {image.shape}")
    return (1 - rgb2gray(image[..., :3])).astype(np.float32)


# ----------------------------------------------------------------------------- bundled samples
#: Sample images shipped in ``cellpose_nb/sample_data`` (CC0, DSB2018; see its README).
SAMPLES = {
    "fluorescence": "dsb_fluorescence_003cee89",
    "histology": "dsb_histology_00ae65c1",
    "whole_cells": "cil_F01_120",  # CIL MP6843, CC BY 3.0: channel 0 phalloidin, 1 DAPI
}


def load_sample(name: str = "fluorescence") -> Sample:
    """One of the small sample images shipped with the package, with its labels.

    ``fluorescence`` and ``histology`` are DSB2018 nuclei (CC0); ``whole_cells``
    is a CIL MP6843 field (520x696x2: phalloidin, DAPI; CC BY 3.0, see
    ``sample_data/README.md`` for the attribution).

    Parameters
    ----------
    name : {"fluorescence", "histology", "whole_cells"}

    Returns
    -------
    Sample

    Examples
    --------
    >>> s = load_sample("fluorescence")
    >>> s.image.shape, int(s.labels.max())
    ((256, 256), 36)
    """
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; available: {sorted(SAMPLES)}")
    stem = SAMPLES[name]
    with importlib.resources.as_file(_PACKAGE / "sample_data") as folder:
        folder = Path(folder).resolve()
        image_path = folder / f"{stem}_img.tif"
        labels_path = folder / f"{stem}_masks.tif"
        return Sample(name=stem, image=read_image(image_path), labels=read_labels(labels_path),
                      path=image_path)
