"""Synthetic cells: fluorescence-like images of irregular cells with exact labels.

:func:`make_synthetic` draws one image (cytoplasm + nuclei channels, or
nuclei only), :func:`make_synthetic_dataset` many; the shapes and their
placement are drawn by :mod:`cellpose_nb.data._synthetic_shapes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from cellpose_nb.data._synthetic_shapes import (
    MIN_AREA_FRACTION,
    MIN_AREA_PIXELS,
    _clean_objects,
    _draw_nuclei,
    _draw_shapes,
    _paint_objects,
    _place_centres,
)

__all__ = ["SyntheticSample", "make_synthetic", "make_synthetic_dataset"]

KINDS = ("cyto", "nuclei")  # cells with their nuclei (two channels), or nuclei only
# Every magic number of the rendering, named once (those of the shapes: _synthetic_shapes).
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
