"""Data: synthetic cells, Cellpose-style folders and the course data sets.

Three parts, all in the NumPy layer (no torch, matplotlib or ipywidgets):

1. :func:`make_synthetic` draws fluorescence-like images of irregular cells
   (cytoplasm + nuclei channels) with exact ``labels``; seeded, fast, and
   with knobs for size, crowding (``touching``), noise and blur.
2. :func:`read_folder` / :func:`iter_folder` read a Cellpose-style folder
   (``<name>_img.tif`` + ``<name>_masks.tif|png`` or the GUI's
   ``<name>_seg.npy``); :func:`read_image`, :func:`read_labels` and
   :func:`write_labels` handle single files.
3. :func:`data_root`, :func:`dataset_index`, :func:`load_dsb2018` and
   :func:`load_cil` find and load the real data sets under ``shared/data``.

Glossary (see DESIGN.md): ``image`` is (H, W) or (H, W, C); ``labels`` is an
integer (H, W) array, 0 = background, 1..N = one object each; ``diameter``
is in pixels.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

__all__ = [
    "load_sample",
    "SAMPLES",
    "SyntheticSample",
    "make_synthetic",
    "make_synthetic_dataset",
    "Sample",
    "read_image",
    "read_labels",
    "write_labels",
    "list_folder",
    "iter_folder",
    "read_folder",
    "data_root",
    "dataset_index",
    "load_dsb2018",
    "load_cil",
    "histology_to_gray",
]

# ---------------------------------------------------------------------------
# Synthetic cells: every magic number of the generator, named once.
# ---------------------------------------------------------------------------
KINDS = ("cyto", "nuclei")
SIZE_SIGMA = 0.2  # log-normal spread of the object radius (about +-20 %)
ASPECT_RANGE = {"cyto": (1.0, 1.6), "nuclei": (1.0, 1.35)}  # long / short axis
FOURIER_ORDERS = np.arange(2, 6)  # radial perturbation harmonics (lobes)
FOURIER_AMPLITUDE = {"cyto": 0.08, "nuclei": 0.03}  # relative radius wobble
MAX_WOBBLE = 0.35  # cap on the summed harmonic amplitudes: radius >= 65 %
MIN_GAP = 2.0  # pixels between separate objects (so they never touch)
TOUCH_DEPTH = (0.75, 0.9)  # centre distance / summed radii for touching pairs
MAX_CLUMP = 5  # touching objects come in clumps of 2 to MAX_CLUMP
MIN_CENTRE_DISTANCE = 0.7  # centre distance / summed mean radii, any pair
PLACEMENT_TRIES = 64  # candidate positions drawn per object
MIN_AREA_FRACTION = 0.2  # objects smaller than this x nominal area are dropped
MIN_AREA_PIXELS = 4  # ...and never smaller than this many pixels
NUCLEUS_SIZE = (0.4, 0.5)  # nucleus diameter / cell diameter
NUCLEUS_ASPECT = (1.0, 1.3)
NUCLEUS_OFFSET = 0.2  # maximal nucleus offset from the cell centre / radius
BACKGROUND_LEVEL = {"cyto": 0.08, "nuclei": 0.04}  # mean background intensity
BACKGROUND_SWING = 0.5  # relative amplitude of the smooth background gradient
CELL_BRIGHTNESS = (0.35, 0.8)  # cytoplasm brightness range, per cell
NUCLEUS_BRIGHTNESS = (0.5, 0.9)  # nuclear-channel brightness range, per nucleus
EDGE_FALLOFF = 0.3  # brightness drop from centre to edge (x rho**2)
NUCLEUS_CYTO_DIM = 0.85  # cytoplasm channel is this much dimmer over nuclei
TEXTURE_STRENGTH = 0.15  # relative std of the smooth intra-cell texture
TEXTURE_SCALE = 0.1  # texture correlation length / diameter
READ_NOISE = 0.2  # read-noise std relative to ``noise`` (shot noise is 1x)


@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """One synthetic image with its ground truth.

    Attributes
    ----------
    image : ndarray of float32
        (H, W, 2) for ``kind="cyto"`` (channel 0 cytoplasm, channel 1 nuclei)
        or (H, W) for ``kind="nuclei"``. Roughly in [0, 1], not normalised.
    labels : ndarray of int32, shape (H, W)
        The objects to segment: cells (cyto) or nuclei (nuclei); 0 is
        background, 1..N sequential, each object one 4-connected component.
    nuclei : ndarray of int32, shape (H, W)
        The nucleus of cell ``k`` has label ``k`` too. For ``kind="nuclei"``
        this is a copy of ``labels``.
    diameter : float
        The nominal object diameter in pixels (the median of the drawn sizes).
    """

    image: np.ndarray
    labels: np.ndarray
    nuclei: np.ndarray
    diameter: float


def _check_synthetic_args(shape, n_cells, diameter, kind, touching, noise, blur):
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else shape
    if (
        not isinstance(shape, tuple)
        or len(shape) != 2
        or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape)
    ):
        raise ValueError(f"shape must be (rows, cols) of positive integers; got {shape!r}")
    if not isinstance(n_cells, (int, np.integer)) or n_cells < 0:
        raise ValueError(f"n_cells must be an integer >= 0; got {n_cells!r}")
    if not np.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"diameter must be a positive number of pixels; got {diameter!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if not 0.0 <= touching <= 1.0:
        raise ValueError(f"touching must be a fraction in [0, 1]; got {touching!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0; got {noise!r}")
    if not blur >= 0:
        raise ValueError(f"blur must be >= 0 (a Gaussian sigma in pixels); got {blur!r}")
    return (int(shape[0]), int(shape[1]))


def _draw_shapes(rng, n, radius, kind):
    """Random star-convex shapes: ellipse axes, orientation, Fourier wobble."""
    r = radius * np.exp(SIZE_SIGMA * rng.standard_normal(n))
    aspect = rng.uniform(*ASPECT_RANGE[kind], n)
    a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)  # area-preserving axes
    theta = rng.uniform(0, np.pi, n)
    amp = FOURIER_AMPLITUDE[kind] * np.abs(rng.standard_normal((n, FOURIER_ORDERS.size)))
    amp /= FOURIER_ORDERS - 1  # higher harmonics wobble less
    total = amp.sum(axis=1, keepdims=True)
    amp *= np.minimum(1.0, MAX_WOBBLE / np.maximum(total, 1e-12))
    phase = rng.uniform(0, 2 * np.pi, (n, FOURIER_ORDERS.size))
    r_max = a * (1 + amp.sum(axis=1))  # upper bound of the radial function
    return r, a, b, theta, amp, phase, r_max


def _radius_at(phi, a, b, theta, amp, phase):
    """Radial function R(phi) of star-convex shapes (arrays broadcast; amp, phase (..., K))."""
    c, s = np.cos(phi - theta), np.sin(phi - theta)
    ellipse = a * b / np.sqrt((b * c) ** 2 + (a * s) ** 2)
    wobble = 1 + (amp * np.cos(phi[..., None] * FOURIER_ORDERS + phase)).sum(axis=-1)
    return ellipse * wobble


def _plan_groups(rng, n, touching):
    """Placement order and group id per object (-1: placed apart from all)."""
    n_touching = int(round(touching * n))
    if n_touching == 1:  # a lone cell cannot touch: make it a pair
        n_touching = 2 if n >= 2 else 0
    order = rng.permutation(n)
    group = np.full(n, -1)
    start = 0
    while n_touching - start >= 2:
        size = min(int(rng.integers(2, MAX_CLUMP + 1)), n_touching - start)
        if n_touching - start - size == 1:  # no lonely leftover
            size = n_touching - start if n_touching - start <= MAX_CLUMP else size - 1
        group[order[start : start + size]] = start
        start += size
    return order, group


def _place_centres(rng, shape, shapes, touching):
    """Centres of the objects; NaN for those that did not fit."""
    r, a, b, theta, amp, phase, r_max = shapes
    centres = np.full((r.size, 2), np.nan)
    size = np.asarray(shape, dtype=float)
    order, group = _plan_groups(rng, r.size, touching)
    for i in order:
        placed = np.flatnonzero(~np.isnan(centres[:, 0]))
        mates = placed[group[placed] == group[i]] if group[i] >= 0 else placed[:0]
        others = np.setdiff1d(placed, mates)
        if mates.size:  # press against a random clump mate, in a random direction
            partner = rng.choice(mates, PLACEMENT_TRIES)
            phi = rng.uniform(-np.pi, np.pi, PLACEMENT_TRIES)
            reach = _radius_at(phi + np.pi, a[i], b[i], theta[i], amp[i], phase[i]) + _radius_at(
                phi, a[partner], b[partner], theta[partner], amp[partner], phase[partner]
            )
            dist = reach * rng.uniform(*TOUCH_DEPTH, PLACEMENT_TRIES)
            cand = centres[partner] + dist[:, None] * np.stack([np.sin(phi), np.cos(phi)], 1)
            near = np.linalg.norm(cand[:, None] - centres[mates][None], axis=2)
            ok = (near > MIN_CENTRE_DISTANCE * (r[i] + r[mates])).all(axis=1)
        else:
            cand = rng.uniform(0, 1, (PLACEMENT_TRIES, 2)) * size - 0.5
            ok = np.ones(PLACEMENT_TRIES, bool)
        far = np.linalg.norm(cand[:, None] - centres[others][None], axis=2)
        ok &= (far > r_max[i] + r_max[others] + MIN_GAP).all(axis=1)
        ok &= ((cand >= -0.5) & (cand < size - 0.5)).all(axis=1)
        if ok.any():
            centres[i] = cand[np.argmax(ok)]
    return centres


def _paint_objects(shape, centres, shapes):
    """Give each pixel to the object with the smallest normalised radius rho."""
    _, a, b, theta, amp, phase, r_max = shapes
    labels = np.zeros(shape, np.int32)
    rho = np.full(shape, np.inf, np.float32)
    for i in np.flatnonzero(~np.isnan(centres[:, 0])):
        (cy, cx), half = centres[i], int(np.ceil(r_max[i])) + 1
        r0, r1 = max(int(cy) - half, 0), min(int(cy) + half + 1, shape[0])
        c0, c1 = max(int(cx) - half, 0), min(int(cx) + half + 1, shape[1])
        dy = np.arange(r0, r1)[:, None] - cy
        dx = np.arange(c0, c1)[None, :] - cx
        rho_i = np.hypot(dy, dx) / _radius_at(np.arctan2(dy, dx), a[i], b[i], theta[i], amp[i], phase[i])
        box = (slice(r0, r1), slice(c0, c1))
        win = (rho_i < 1) & (rho_i < rho[box])
        labels[box][win] = i + 1
        rho[box][win] = rho_i[win]
    return labels, rho


def _keep_centre_component(mask, centre):
    """The 4-connected component of ``mask`` holding ``centre`` (else the largest)."""
    comp, n = ndimage.label(mask)
    if n <= 1:
        return mask
    k = comp[centre]
    if k == 0:
        k = 1 + np.argmax(np.bincount(comp.ravel())[1:])
    return comp == k


def _clean_objects(labels, centres, min_area):
    """Drop fragments and tiny objects in place; return the kept ids."""
    kept = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        mask = labels[sl] == i + 1
        local = tuple(int(round(c)) - s.start for c, s in zip(centres[i], sl))
        inside = all(0 <= p < m for p, m in zip(local, mask.shape))
        keep = _keep_centre_component(mask, local if inside else (0, 0))
        if keep.sum() < min_area:
            keep[:] = False
        labels[sl][mask & ~keep] = 0
        if keep.any():
            kept.append(i + 1)
    return np.asarray(kept, dtype=np.int64)


def _holds(mask, index):
    """Whether integer ``index`` lies inside ``mask`` and is True there."""
    return bool(np.all(index >= 0) and np.all(index < mask.shape) and mask[tuple(index)])


def _draw_nuclei(rng, labels, centres, radii, kept):
    """One elliptical nucleus per kept cell, clipped to the cell."""
    nuclei = np.zeros_like(labels)
    n = kept.size
    size = radii[kept - 1] * rng.uniform(*NUCLEUS_SIZE, n)
    aspect = rng.uniform(*NUCLEUS_ASPECT, n)
    theta = rng.uniform(0, np.pi, n)
    shift = NUCLEUS_OFFSET * radii[kept - 1] * rng.uniform(0, 1, n)
    angle = rng.uniform(-np.pi, np.pi, n)
    slices = ndimage.find_objects(labels)
    for k, cell in enumerate(kept):
        sl = slices[cell - 1]
        cell_mask = labels[sl] == cell
        origin = np.array([s.start for s in sl])
        centre = centres[cell - 1] + shift[k] * np.array([np.sin(angle[k]), np.cos(angle[k])])
        local = np.round(centre).astype(int) - origin
        if not _holds(cell_mask, local):  # the shifted centre fell outside: use the cell's
            centre = centres[cell - 1]
            local = np.round(centre).astype(int) - origin
        if not _holds(cell_mask, local):  # ...or, rarely, the cell's deepest pixel
            depth = ndimage.distance_transform_edt(cell_mask)
            local = np.array(np.unravel_index(np.argmax(depth), depth.shape))
            centre = local + origin
        dy = np.arange(sl[0].start, sl[0].stop)[:, None] - centre[0]
        dx = np.arange(sl[1].start, sl[1].stop)[None, :] - centre[1]
        c, s = np.cos(theta[k]), np.sin(theta[k])
        ra, rb = size[k] * np.sqrt(aspect[k]), size[k] / np.sqrt(aspect[k])
        inside = ((dx * c + dy * s) / ra) ** 2 + ((dy * c - dx * s) / rb) ** 2 < 1
        mask = inside & cell_mask
        mask[tuple(local)] = True  # never empty, even for tiny cells
        nuclei[sl][_keep_centre_component(mask, tuple(local))] = cell
    return nuclei


def _smooth_field(rng, shape, sigma):
    """Smooth Gaussian noise with unit standard deviation."""
    white = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(white, sigma)
    return field / np.float32(max(field.std(), 1e-6))


def _background(rng, shape, level):
    """A smooth, low-frequency illumination: tilted plane plus one wave."""
    rows = np.linspace(-0.5, 0.5, shape[0], dtype=np.float32)[:, None]
    cols = np.linspace(-0.5, 0.5, shape[1], dtype=np.float32)[None, :]
    gy, gx, fy, fx, phase = rng.uniform(-1, 1, 5).tolist()
    wy, wx = np.pi * (fy * rows + phase), np.pi * fx * cols
    wave = np.cos(wy) * np.cos(wx) - np.sin(wy) * np.sin(wx)  # cos(wy + wx), separably
    return level * (1 + BACKGROUND_SWING * (gy * rows + gx * cols + 0.5 * wave))


def _render(rng, labels, rho, nuclei, diameter, kind):
    """Intensity image(s) of the painted objects, before blur and noise."""
    n = int(labels.max())
    shape = labels.shape
    inside = labels > 0
    falloff = np.where(inside, 1 - EDGE_FALLOFF * np.minimum(rho, 1) ** 2, 0).astype(np.float32)
    sigma = max(TEXTURE_SCALE * diameter, 1.0)
    nuc_level = np.concatenate([[0], rng.uniform(*NUCLEUS_BRIGHTNESS, n)]).astype(np.float32)
    nuc_bg = _background(rng, shape, BACKGROUND_LEVEL["nuclei"])
    nuc_texture = 1 + TEXTURE_STRENGTH * _smooth_field(rng, shape, sigma)
    if kind == "nuclei":
        return nuc_bg + nuc_level[labels] * falloff * nuc_texture
    nuc = nuc_bg + nuc_level[nuclei] * nuc_texture
    cell_level = np.concatenate([[0], rng.uniform(*CELL_BRIGHTNESS, n)]).astype(np.float32)
    cyto_texture = 1 + TEXTURE_STRENGTH * _smooth_field(rng, shape, sigma)
    dim = np.where(nuclei > 0, np.float32(NUCLEUS_CYTO_DIM), np.float32(1))
    cyto = _background(rng, shape, BACKGROUND_LEVEL["cyto"])
    cyto = cyto + cell_level[labels] * falloff * cyto_texture * dim
    return np.stack([cyto, nuc], axis=-1)


def _blur_and_noise(rng, clean, blur, noise):
    """Optical blur, then Poisson-like shot noise plus Gaussian read noise."""
    if blur > 0:
        sigma = (blur, blur, 0)[: clean.ndim]
        clean = ndimage.gaussian_filter(clean, sigma)
    if noise == 0:
        return clean.astype(np.float32)
    # shot noise has variance ~ signal; with read noise, one Gaussian draw:
    std = np.float32(noise) * np.sqrt(np.maximum(clean, 0) + np.float32(READ_NOISE**2))
    return (clean + std * rng.standard_normal(clean.shape, dtype=np.float32)).astype(np.float32)


def make_synthetic(
    shape: tuple[int, int] = (256, 256),
    *,
    n_cells: int = 20,
    diameter: float = 30.0,
    kind: str = "cyto",
    touching: float = 0.5,
    noise: float = 0.05,
    blur: float = 1.0,
    seed: int | np.random.SeedSequence | None = 0,
) -> SyntheticSample:
    """Draw a fluorescence-like image of irregular cells with exact labels.

    Cells are star-convex blobs: an ellipse of random orientation and
    eccentricity whose radius is perturbed by a few random Fourier harmonics;
    sizes vary log-normally (about +-20 %) around ``diameter``. A fraction
    ``touching`` of the objects come in clumps of 2 to ``MAX_CLUMP``, each
    pressed against a clump mate (where shapes overlap, a pixel goes to the
    object whose normalised radial distance is smaller, which gives a shared
    boundary); the rest, and the clumps, stay apart from each other by at
    least ``MIN_GAP`` pixels. Every
    cell gets one elliptical nucleus (0.4-0.5 of its diameter, slightly off
    centre, clipped to the cell). Intensities: smooth uneven background,
    per-object brightness, dimmer cell edges, smooth texture, cytoplasm a bit
    dimmer over the nucleus, Gaussian blur, then shot + read noise.

    Parameters
    ----------
    shape : tuple of int
        (rows, cols) of the image.
    n_cells : int
        Number of objects to draw. Fewer come out when the image is too
        crowded to place them all or when one is cut down to a tiny sliver.
    diameter : float
        Median object diameter in pixels (cells for "cyto", nuclei for "nuclei").
    kind : {"cyto", "nuclei"}
        "cyto": two channels (cytoplasm, nuclei), ``labels`` are cells.
        "nuclei": one channel, ``labels`` are nuclei of size ``diameter``.
    touching : float
        Fraction in [0, 1] of the objects that touch a neighbour (about: a
        clump member that does not fit is dropped, a lone one is made a pair).
    noise : float
        Noise strength (std at intensity 1); 0 for a clean image.
    blur : float
        Gaussian blur sigma in pixels; 0 for none.
    seed : int or numpy.random.SeedSequence
        Seed for ``np.random.default_rng``; the same seed gives the same sample.

    Returns
    -------
    SyntheticSample
        ``image`` float32 (H, W, 2) or (H, W), ``labels`` and ``nuclei`` int32
        (H, W), and ``diameter``.

    Examples
    --------
    >>> s = make_synthetic((64, 64), n_cells=3, diameter=16, seed=1)
    >>> s.image.shape, s.image.dtype, s.labels.dtype
    ((64, 64, 2), dtype('float32'), dtype('int32'))
    >>> int(s.labels.max()) == len(np.unique(s.labels)) - 1
    True
    """
    shape = _check_synthetic_args(shape, n_cells, diameter, kind, touching, noise, blur)
    rng = np.random.default_rng(seed)
    shapes = _draw_shapes(rng, n_cells, diameter / 2, kind)
    centres = _place_centres(rng, shape, shapes, touching)
    labels, rho = _paint_objects(shape, centres, shapes)
    min_area = max(MIN_AREA_PIXELS, MIN_AREA_FRACTION * np.pi * (diameter / 2) ** 2)
    kept = _clean_objects(labels, centres, min_area)
    relabel = np.zeros(n_cells + 1, np.int32)
    relabel[kept] = np.arange(1, kept.size + 1)
    if kind == "cyto":
        nuclei = relabel[_draw_nuclei(rng, labels, centres, shapes[0], kept)]
    labels = relabel[labels]
    if kind == "nuclei":
        nuclei = labels.copy()
    image = _blur_and_noise(rng, _render(rng, labels, rho, nuclei, diameter, kind), blur, noise)
    return SyntheticSample(image=image, labels=labels, nuclei=nuclei, diameter=float(diameter))


def make_synthetic_dataset(
    n_images: int, *, shape: tuple[int, int] = (256, 256), seed: int = 0, **kwargs: Any
) -> list[SyntheticSample]:
    """Draw ``n_images`` independent synthetic samples.

    Parameters
    ----------
    n_images : int
        Number of samples.
    shape : tuple of int
        (rows, cols) of every image.
    seed : int
        Root seed; image ``k`` uses the ``k``-th child of
        ``np.random.SeedSequence(seed)``, so it does not depend on ``n_images``.
    **kwargs
        Passed on to :func:`make_synthetic` (``n_cells``, ``diameter``, ...).

    Returns
    -------
    list of SyntheticSample

    Examples
    --------
    >>> ds = make_synthetic_dataset(2, shape=(48, 48), n_cells=2, diameter=12)
    >>> len(ds), ds[0].labels.shape
    (2, (48, 48))
    """
    if not isinstance(n_images, (int, np.integer)) or n_images < 0:
        raise ValueError(f"n_images must be an integer >= 0; got {n_images!r}")
    children = np.random.SeedSequence(seed).spawn(int(n_images))
    return [make_synthetic(shape, seed=child, **kwargs) for child in children]


# ---------------------------------------------------------------------------
# Files and Cellpose-style folders
# ---------------------------------------------------------------------------
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_EXTENSIONS = (".tif", ".tiff", ".png")  # lossless only
SEG_SUFFIX = "_seg.npy"  # the Cellpose GUI's pickled results
UINT16_LIMIT = 2**16


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


def _natural_key(text):
    """Sort key so that "img2" comes before "img10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


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
    try:
        if ext in TIFF_EXTENSIONS:
            return tifffile.imread(path)
        import imageio.v3 as iio  # lazy: only needed for PNG/JPEG

        return iio.imread(path, plugin="pillow")
    except Exception as exc:  # tifffile / Pillow raise many types; name the file
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _check_labels(labels, source):
    """Raise unless ``labels`` is a non-negative integer (H, W) array."""
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels in {source} must be an integer array; got dtype {labels.dtype} "
            "(if the values are whole numbers, cast with labels.astype(np.int32))"
        )
    if labels.ndim != 2:
        raise ValueError(f"labels in {source} must be 2-D (H, W); got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels in {source} must be >= 0; got minimum {labels.min()}")
    return labels


def read_labels(path: str | os.PathLike, *, allow_pickle: bool = True) -> np.ndarray:
    """Read a label image: TIFF, PNG, or a Cellpose GUI ``_seg.npy``.

    Parameters
    ----------
    path : str or pathlib.Path
        A .tif, .tiff or .png label image, or a .npy file holding either an
        integer array or the Cellpose GUI's dict with key ``"masks"``.
    allow_pickle : bool
        ``_seg.npy`` files are pickled dicts: loading one **executes pickle**
        and can run arbitrary code. Only read them from trusted sources; set
        False to refuse pickled files.

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
        ``"masks"`` key.

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
            loaded = np.load(path, allow_pickle=allow_pickle)
        except Exception as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        if loaded.dtype == object and loaded.shape == ():
            loaded = loaded.item()
            if not isinstance(loaded, dict) or "masks" not in loaded:
                raise ValueError(f"cannot read {path}: expected a dict with key 'masks'")
            loaded = np.asarray(loaded["masks"])
        return _check_labels(loaded, path)
    if path.suffix.lower() not in MASK_EXTENSIONS:
        allowed = MASK_EXTENSIONS + (".npy",)
        raise ValueError(f"cannot read labels {path}: extension {path.suffix!r} is not one of {allowed}")
    return _check_labels(read_image(path), path)


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
    labels = _check_labels(np.asarray(labels), "the array to write")
    dtype = np.uint16 if labels.size == 0 or labels.max() < UINT16_LIMIT else np.uint32
    try:
        with open(path, "wb" if overwrite else "xb") as fh:
            tifffile.imwrite(fh, labels.astype(dtype, copy=False), compression="zlib")
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
    return path


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
        Consider ``_seg.npy`` partners (pickled; trusted sources only).

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
    governs :func:`read_labels` (``_seg.npy`` executes pickle).

    Returns
    -------
    iterator of Sample

    Examples
    --------
    >>> import tempfile
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
    >>> import tempfile
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


# ---------------------------------------------------------------------------
# The course data sets under shared/data
# ---------------------------------------------------------------------------
DATA_ENV = "CELLPOSE_NB_DATA"
DATA_RELATIVE = Path("shared") / "data"
DSB_MODALITIES = ("fluorescence", "brightfield", "histology")
_KEY_COLUMNS = ("id", "name")  # index columns that stay strings


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
        Path(__file__).resolve().parents[1].parent / DATA_RELATIVE,
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
}


def load_sample(name: str = "fluorescence") -> Sample:
    """One of the small CC0 sample images shipped with the package, with its labels.

    Parameters
    ----------
    name : {"fluorescence", "histology"}

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
    folder = Path(__file__).resolve().parent / "sample_data"
    stem = SAMPLES[name]
    image_path = folder / f"{stem}_img.tif"
    labels_path = folder / f"{stem}_masks.tif"
    return Sample(name=stem, image=read_image(image_path), labels=read_labels(labels_path),
                  path=image_path)
