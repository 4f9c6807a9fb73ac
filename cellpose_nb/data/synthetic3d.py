"""Synthetic volumes: touching ellipsoidal cells with nuclei, sampled anisotropically.

:func:`make_synthetic_volume` is the 3D twin of
:func:`cellpose_nb.data.make_synthetic`: a two-channel image (cytoplasm,
nuclei) with exact ``labels``, seeded.  Geometry is drawn in isotropic
physical units (in-plane pixels); the Z axis is then sampled ``anisotropy``
times coarser, as a confocal stack usually is.  The rendering reuses the
2D intensity constants, so a YX slice looks like a 2D synthetic image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cellpose_nb.data._synthetic_shapes import (
    ASPECT_RANGE,
    NUCLEUS_ASPECT,
    NUCLEUS_OFFSET,
    NUCLEUS_SIZE,
    PLACEMENT_TRIES,
    SIZE_SIGMA,
)
from cellpose_nb.data.synthetic import (
    BACKGROUND_LEVEL,
    CELL_BRIGHTNESS,
    EDGE_FALLOFF,
    NUCLEUS_BRIGHTNESS,
    NUCLEUS_CYTO_DIM,
    READ_NOISE,
    TEXTURE_SCALE,
    TEXTURE_STRENGTH,
    _background,
    _smooth_field,
)

__all__ = ["SyntheticVolume", "make_synthetic_volume"]

# The magic numbers of the 3D geometry, named once (the rest are the 2D ones).
TOUCH_DEPTH_3D = 0.8  # minimum centre distance / summed radii: closer cells overlap and are cut
MIN_VOLUME_FRACTION = 0.2  # cells cut below this x nominal voxel count are dropped
MIN_VOXELS = 8  # ...and never kept below this many voxels


@dataclass(frozen=True, eq=False)
class SyntheticVolume:
    """One synthetic volume with its ground truth.

    Attributes
    ----------
    image : ndarray (Z, Y, X, 2) of float32
        Channel 0 cytoplasm, channel 1 nuclei; roughly in [0, 1], not normalised.
    labels : ndarray (Z, Y, X) of int32
        The cells: 0 background, 1..N sequential, each one 6-connected component.
    nuclei : ndarray (Z, Y, X) of int32
        The nucleus of cell ``k`` has label ``k`` too.
    diameter : float
        Nominal cell diameter in in-plane pixels (the median of the drawn sizes).
    anisotropy : float
        Z spacing / in-plane spacing: a cell spans ``diameter / anisotropy`` slices.
    """

    image: np.ndarray
    labels: np.ndarray
    nuclei: np.ndarray
    diameter: float
    anisotropy: float


def _check_volume_args(shape, n_cells, diameter, anisotropy, noise, blur):
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else shape
    if (not isinstance(shape, tuple) or len(shape) != 3
            or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape)):
        raise ValueError(f"shape must be (Z, Y, X) of positive integers; got {shape!r}")
    if not isinstance(n_cells, (int, np.integer)) or n_cells < 0:
        raise ValueError(f"n_cells must be an integer >= 0; got {n_cells!r}")
    for name, value in (("diameter", diameter), ("anisotropy", anisotropy)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number; got {value!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0; got {noise!r}")
    if not blur >= 0:
        raise ValueError(f"blur must be >= 0 (a Gaussian sigma in in-plane pixels); got {blur!r}")
    return tuple(int(s) for s in shape)


def _rotations(rng, n):
    """``n`` random 3D rotation matrices (QR of Gaussian matrices, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def _place_centres_3d(rng, extent, radii):
    """Physical centres (N, 3), NaN for cells that did not fit; close pairs overlap (touch)."""
    centres = np.full((radii.size, 3), np.nan)
    for i in range(radii.size):
        cand = rng.uniform(0, 1, (PLACEMENT_TRIES, 3)) * extent
        placed = ~np.isnan(centres[:, 0])
        dist = np.linalg.norm(cand[:, None] - centres[placed][None], axis=2)
        ok = (dist > TOUCH_DEPTH_3D * (radii[i] + radii[placed])).all(axis=1)
        if ok.any():
            centres[i] = cand[np.argmax(ok)]
    return centres


def _ellipsoid_rho(shape, anisotropy, centre, axes, rot, reach):
    """Normalised radius of an ellipsoid in the voxel box around it: (box slices, rho)."""
    lo = np.floor((centre - reach) / [anisotropy, 1, 1]).astype(int)
    hi = np.ceil((centre + reach) / [anisotropy, 1, 1]).astype(int) + 1
    box = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, shape))
    grid = np.meshgrid(*[np.arange(s.start, s.stop) * f for s, f in zip(box, (anisotropy, 1, 1))],
                       indexing="ij")
    d = np.stack([g - c for g, c in zip(grid, centre)], axis=-1) @ rot  # body coordinates
    return box, np.sqrt(((d / axes) ** 2).sum(axis=-1))


def _paint_cells(rng, shape, anisotropy, centres, radii):
    """Labels and normalised radius: each voxel goes to the cell with the smallest rho."""
    n = radii.size
    s = np.sqrt(rng.uniform(*ASPECT_RANGE["cyto"], n))
    axes = radii[:, None] * np.stack([s, np.ones(n), 1 / s], axis=1)  # volume-preserving
    rots = _rotations(rng, n)
    labels = np.zeros(shape, np.int32)
    rho = np.full(shape, np.inf, np.float32)
    for i in np.flatnonzero(~np.isnan(centres[:, 0])):
        box, rho_i = _ellipsoid_rho(shape, anisotropy, centres[i], axes[i], rots[i], axes[i].max())
        win = (rho_i < 1) & (rho_i < rho[box])
        labels[box][win] = i + 1
        rho[box][win] = rho_i[win]
    return labels, rho


def _clean_cells(labels, min_voxels):
    """Keep each cell's largest 6-connected piece, drop small cells, relabel 1..N.

    Returns the new labels and the old id of each kept cell.
    """
    out = np.zeros_like(labels)
    kept = []
    k = 0
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        comp, m = ndimage.label(labels[sl] == i + 1)
        sizes = np.bincount(comp.ravel())[1:]
        if m == 0 or sizes.max() < min_voxels:
            continue
        k += 1
        kept.append(i + 1)
        out[sl][comp == 1 + np.argmax(sizes)] = k
    return out, np.array(kept, dtype=np.int64)


def _draw_nuclei_3d(rng, labels, anisotropy, radii_of):
    """One ellipsoidal nucleus per cell, slightly off centre, clipped to the cell."""
    nuclei = np.zeros_like(labels)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        cell = labels[sl] == k
        depth = ndimage.distance_transform_edt(cell, sampling=(anisotropy, 1, 1))
        deep = np.array(np.unravel_index(np.argmax(depth), cell.shape))
        r = radii_of[k - 1] * rng.uniform(*NUCLEUS_SIZE)
        s = np.sqrt(rng.uniform(*NUCLEUS_ASPECT))
        shift = NUCLEUS_OFFSET * radii_of[k - 1] * rng.uniform(0, 1) * _rotations(rng, 1)[0, 0]
        centre = (deep + [s.start for s in sl]) * [anisotropy, 1, 1] + shift
        box, rho = _ellipsoid_rho(labels.shape, anisotropy, centre, r * np.array([s, 1, 1 / s]),
                                  _rotations(rng, 1)[0], r * s)
        mask = np.zeros(labels.shape, bool)
        mask[box] = rho < 1
        mask = mask[sl] & cell
        mask[tuple(deep)] = True  # never empty
        nuclei[sl][mask] = k
    return nuclei


def _render_volume(rng, labels, rho, nuclei, diameter, anisotropy):
    """Cytoplasm and nuclear channels (Z, Y, X, 2), before blur and noise."""
    n = int(labels.max())
    shape = labels.shape
    falloff = np.where(labels > 0, 1 - EDGE_FALLOFF * np.minimum(rho, 1) ** 2, 0).astype(np.float32)
    sigma = max(TEXTURE_SCALE * diameter, 1.0)
    sigma3 = (max(sigma / anisotropy, 0.5), sigma, sigma)
    nuc_level = np.concatenate([[0], rng.uniform(*NUCLEUS_BRIGHTNESS, n)]).astype(np.float32)
    cell_level = np.concatenate([[0], rng.uniform(*CELL_BRIGHTNESS, n)]).astype(np.float32)
    nuc = _background(rng, shape[1:], BACKGROUND_LEVEL["nuclei"])[None] \
        + nuc_level[nuclei] * (1 + TEXTURE_STRENGTH * _smooth_field(rng, shape, sigma3))
    dim = np.where(nuclei > 0, np.float32(NUCLEUS_CYTO_DIM), np.float32(1))
    cyto = _background(rng, shape[1:], BACKGROUND_LEVEL["cyto"])[None] \
        + cell_level[labels] * falloff * dim * (1 + TEXTURE_STRENGTH * _smooth_field(rng, shape, sigma3))
    return np.stack([cyto, nuc], axis=-1).astype(np.float32)


def make_synthetic_volume(
    shape: tuple[int, int, int] = (32, 128, 128),
    *,
    n_cells: int = 20,
    diameter: float = 24.0,
    anisotropy: float = 2.0,
    noise: float = 0.05,
    blur: float = 1.0,
    seed: int | np.random.SeedSequence | None = 0,
) -> SyntheticVolume:
    """Draw a fluorescence-like volume of touching ellipsoidal cells with exact labels.

    Cells are ellipsoids of random orientation and elongation (the 2D
    aspect range), sizes log-normal (about +-20 %) around ``diameter``.
    Centres are drawn at random, at least ``TOUCH_DEPTH_3D`` x the summed radii
    apart: closer cells overlap, and a voxel they share goes to the cell whose
    normalised radius is smaller, which gives touching cells with a shared
    face.  Every cell gets one ellipsoidal nucleus (0.4-0.5 of its size,
    slightly off centre, clipped to the cell).  Intensities as in 2D, then
    Gaussian blur (``blur`` in-plane, ``blur / anisotropy`` in Z) and shot +
    read noise.

    Parameters
    ----------
    shape : (Z, Y, X)
        Voxels of the volume.
    n_cells : int
        Cells to draw; fewer come out when they do not fit or are cut to slivers.
    diameter : float
        Median cell diameter in in-plane pixels.
    anisotropy : float
        Z spacing / in-plane spacing (> 1: Z sampled coarser).
    noise : float
        Noise strength (std at intensity 1); 0 for a clean volume.
    blur : float
        Gaussian sigma in in-plane pixels; 0 for none.
    seed : int or numpy.random.SeedSequence
        Seed for ``np.random.default_rng``; the same seed gives the same volume.

    Returns
    -------
    SyntheticVolume
        ``image`` float32 (Z, Y, X, 2), ``labels`` and ``nuclei`` int32 (Z, Y, X),
        ``diameter`` and ``anisotropy``.

    Examples
    --------
    >>> v = make_synthetic_volume((8, 48, 48), n_cells=4, diameter=16, seed=1)
    >>> v.image.shape, v.image.dtype, v.labels.dtype
    ((8, 48, 48, 2), dtype('float32'), dtype('int32'))
    >>> int(v.labels.max()) == len(np.unique(v.labels)) - 1
    True
    """
    shape = _check_volume_args(shape, n_cells, diameter, anisotropy, noise, blur)
    anisotropy = float(anisotropy)
    rng = np.random.default_rng(seed)
    radii = diameter / 2 * np.exp(SIZE_SIGMA * rng.standard_normal(n_cells))
    extent = np.array(shape, float) * [anisotropy, 1, 1]
    centres = _place_centres_3d(rng, extent, radii)
    labels, rho = _paint_cells(rng, shape, anisotropy, centres, radii)
    nominal = 4 / 3 * np.pi * (diameter / 2) ** 3 / anisotropy
    labels, kept = _clean_cells(labels, max(MIN_VOXELS, MIN_VOLUME_FRACTION * nominal))
    nuclei = _draw_nuclei_3d(rng, labels, anisotropy, radii[kept - 1])
    image = _render_volume(rng, labels, rho, nuclei, diameter, anisotropy)
    if blur > 0:
        image = ndimage.gaussian_filter(image, (blur / anisotropy, blur, blur, 0))
    if noise > 0:
        std = np.float32(noise) * np.sqrt(np.maximum(image, 0) + np.float32(READ_NOISE ** 2))
        image = image + std * rng.standard_normal(image.shape, dtype=np.float32)
    return SyntheticVolume(image=image.astype(np.float32), labels=labels, nuclei=nuclei,
                           diameter=float(diameter), anisotropy=anisotropy)
