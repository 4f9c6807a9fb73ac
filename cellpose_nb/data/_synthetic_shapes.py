"""Geometry of the synthetic cells: random star-convex shapes, their placement, nuclei.

Private to :mod:`cellpose_nb.data.synthetic`: these functions draw where the
objects are (labels and nuclei); synthetic.py renders the intensities.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Every magic number of the geometry, named once (re-exported by cellpose_nb.data).
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
