"""Cellpose-style folders: ``<name>_img.tif`` with ``<name>_masks.tif|png`` or ``_seg.npy``.

:func:`list_folder` pairs the files (reads nothing), :func:`iter_folder`
reads them lazily, :func:`read_folder` all at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from cellpose_nb.data.files import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    SEG_SUFFIX,
    Sample,
    read_image,
    read_labels,
)

__all__ = ["list_folder", "iter_folder", "read_folder"]


def _natural_key(text):
    """Sort key so that "img2" comes before "img10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _mask_partners(folder, name, stem, mask_suffix, allow_pickle):
    """Candidate label files of one image, in order of preference."""
    names = [f"{name}{mask_suffix}{ext}" for ext in MASK_EXTENSIONS]
    if allow_pickle:
        names += [f"{stem}{SEG_SUFFIX}", f"{name}{SEG_SUFFIX}"]
    return [folder / n for n in dict.fromkeys(names)]


def list_folder(
    folder: str | os.PathLike,
    *,
    image_suffix: str = "_img",
    mask_suffix: str = "_masks",
    require_masks: bool = True,
    allow_pickle: bool = True,
) -> list[tuple[str, Path, Path | None]]:
    """Pair the images of a Cellpose-style folder with their label files.

    Images are ``<name><image_suffix>.<ext>`` (ext: tif, tiff, png, jpg,
    jpeg). The partner of an image is the first that exists of
    ``<name><mask_suffix>.tif``, ``.tiff``, ``.png``, then the GUI's
    ``<name><image_suffix>_seg.npy`` and ``<name>_seg.npy``. Nothing is read.

    Parameters
    ----------
    folder : str or pathlib.Path
        The folder (not searched recursively).
    image_suffix, mask_suffix : str
        Suffixes before the extension. With ``image_suffix=""`` every image
        file that does not end in ``mask_suffix`` counts as an image.
    require_masks : bool
        Raise when an image has no label partner (else its partner is None).
    allow_pickle : bool
        Consider ``_seg.npy`` partners (pickled; read through an allow-list, see
        :func:`~cellpose_nb.data.safe_npy.load_npy`).

    Returns
    -------
    list of (str, pathlib.Path, pathlib.Path or None)
        ``(name, image_path, labels_path)``, in natural order of ``name``.

    Raises
    ------
    FileNotFoundError
        Missing folder, no images in it, or (``require_masks``) an image
        without a partner; the message names what was looked for.
    ValueError
        Two images share a name (e.g. ``a_img.tif`` and ``a_img.png``).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for f in ["b10_img.tif", "b2_img.tif", "b2_masks.png", "b10_masks.tif"]:
    ...         _ = open(f"{tmp}/{f}", "wb").close()
    ...     [(n, m.name) for n, _, m in list_folder(tmp)]
    [('b2', 'b2_masks.png'), ('b10', 'b10_masks.tif')]
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    images = {}
    for path in folder.iterdir():
        stem = path.stem
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if not stem.endswith(image_suffix) or (mask_suffix and stem.endswith(mask_suffix)):
            continue
        name = stem[: len(stem) - len(image_suffix)]
        if name in images:
            raise ValueError(f"two images named {name!r} in {folder}: {images[name].name} and {path.name}")
        images[name] = path
    if not images:
        raise FileNotFoundError(
            f"no images '*{image_suffix}' with extension {IMAGE_EXTENSIONS} in {folder}"
        )
    pairs = []
    for name in sorted(images, key=_natural_key):
        candidates = _mask_partners(folder, name, images[name].stem, mask_suffix, allow_pickle)
        partner = next((c for c in candidates if c.is_file()), None)
        if partner is None and require_masks:
            looked = ", ".join(c.name for c in candidates)
            raise FileNotFoundError(f"{images[name]} has no labels: looked for {looked}")
        pairs.append((name, images[name], partner))
    return pairs


def _read_pair(name, image_path, labels_path, allow_pickle):
    image = read_image(image_path)
    if labels_path is None:
        return Sample(name, image, None, image_path)
    labels = read_labels(labels_path, allow_pickle=allow_pickle)
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"shape mismatch: {image_path.name} is {image.shape} but {labels_path.name} is "
            f"{labels.shape}; expected labels of shape image.shape[:2] (channels last)"
        )
    return Sample(name, image, labels, image_path)


def iter_folder(
    folder: str | os.PathLike,
    *,
    image_suffix: str = "_img",
    mask_suffix: str = "_masks",
    require_masks: bool = True,
    allow_pickle: bool = True,
) -> Iterator[Sample]:
    """Read a Cellpose-style folder lazily, one :class:`Sample` at a time.

    The folder is listed (and every error of :func:`list_folder` raised)
    when this is called; the files are read as the iterator advances.
    Parameters are those of :func:`list_folder`; ``allow_pickle`` also
    governs :func:`read_labels` (``_seg.npy`` files are pickled).

    Returns
    -------
    iterator of Sample

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> from cellpose_nb.data import write_labels
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     tifffile.imwrite(f"{tmp}/a_img.tif", np.zeros((4, 4), np.uint8))
    ...     _ = write_labels(f"{tmp}/a_masks.tif", np.ones((4, 4), np.int32))
    ...     [(s.name, int(s.labels.max())) for s in iter_folder(tmp)]
    [('a', 1)]
    """
    pairs = list_folder(
        folder,
        image_suffix=image_suffix,
        mask_suffix=mask_suffix,
        require_masks=require_masks,
        allow_pickle=allow_pickle,
    )
    return (_read_pair(*pair, allow_pickle) for pair in pairs)


def read_folder(
    folder: str | os.PathLike,
    *,
    image_suffix: str = "_img",
    mask_suffix: str = "_masks",
    require_masks: bool = True,
    allow_pickle: bool = True,
) -> list[Sample]:
    """Read a whole Cellpose-style folder into a list of :class:`Sample`.

    See :func:`list_folder` for the file naming and the errors, and
    :func:`iter_folder` to read big folders one image at a time.

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     tifffile.imwrite(f"{tmp}/a_img.tif", np.zeros((4, 4), np.uint8))
    ...     [s.labels for s in read_folder(tmp, require_masks=False)]
    [None]
    """
    return list(
        iter_folder(
            folder,
            image_suffix=image_suffix,
            mask_suffix=mask_suffix,
            require_masks=require_masks,
            allow_pickle=allow_pickle,
        )
    )
