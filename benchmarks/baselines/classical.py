"""The classical whole-cell pipeline: nuclear seeds from DAPI, a watershed on the cytoplasm.

The "traditional methods" the Cellpose paper contrasts with, from scikit-image
and scipy only:

1. **Nuclei** (channel 1, DAPI): percentile-normalise, Gaussian smoothing
   (``nuc_sigma``), Otsu threshold; touching nuclei are split by a watershed of
   the distance transform from its peaks (``peak_local_max`` with
   ``nuc_min_distance``).  Each nucleus is one seed.
2. **Foreground** (channel 0, cytoplasm): percentile-normalise, smoothing
   (``cyto_sigma``), then ``cyto_factor`` x the Otsu threshold of the smoothed
   image (cells vary a lot in brightness, so a factor below 1 keeps the dim
   ones); the nuclei count as foreground, holes are filled.
3. **Cells**: a watershed from the nuclear seeds restricted to the foreground,
   of the inverted smoothed cytoplasm (``surface="intensity"``: boundaries in the
   dark between cells) or of its Sobel gradient (``"gradient"``).  Cells smaller
   than ``min_size`` pixels are dropped; foreground without a nucleus stays background.

:func:`grid_search` picks the parameters on training fields only, for the
mean AP at IoU 0.5, 0.75 and 0.9 (``cil_split.SELECT_IOUS``); nuclei and
foreground are computed once per setting and field and reused across the grid.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, sobel, threshold_otsu
from skimage.segmentation import relabel_sequential, watershed

CYTO, NUCLEI = 0, 1  # channel indices of the CIL fields (phalloidin, DAPI)
LOW, HIGH = 1.0, 99.0  # normalisation percentiles, as the networks' input
MIN_NUCLEUS = 30  # px: smaller DAPI specks are not seeds


@dataclass(frozen=True)
class ClassicalParams:
    nuc_sigma: float = 2.0  # Gaussian sigma (px) on the DAPI channel
    nuc_min_distance: int = 7  # px between distance-transform peaks of one nucleus blob
    cyto_sigma: float = 2.0  # Gaussian sigma (px) on the cytoplasm channel
    cyto_factor: float = 0.5  # foreground: smoothed cytoplasm > factor x its Otsu threshold
    surface: str = "intensity"  # watershed of "intensity" (inverted) or "gradient" (Sobel)
    min_size: int = 200  # px: smaller cells are dropped


#: The grid searched on the training fields (2 x 2 x 2 x 4 x 2 x 2 = 128 settings).
GRID = {
    "nuc_sigma": (1.5, 3.0),
    "nuc_min_distance": (5, 10),
    "cyto_sigma": (1.0, 2.5),
    "cyto_factor": (0.2, 0.3, 0.4, 0.55),
    "surface": ("intensity", "gradient"),
    "min_size": (100, 300),
}


def _drop_small(labels, min_size):
    """``labels`` with the objects of fewer than ``min_size`` pixels set to 0 (any skimage version)."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _normalized(channel):
    lo, hi = np.percentile(channel, (LOW, HIGH))
    return np.clip((channel.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def nuclear_seeds(dapi, *, sigma, min_distance):
    """Labels (H, W) int32 of the nuclei in one DAPI channel."""
    smooth = gaussian(_normalized(dapi), sigma=sigma)
    mask = smooth > threshold_otsu(smooth)
    blobs, _ = ndi.label(ndi.binary_fill_holes(mask))
    blobs = _drop_small(blobs, MIN_NUCLEUS)
    mask = blobs > 0
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=blobs, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


def cytoplasm_surface(cyto, *, sigma):
    """The smoothed, normalised cytoplasm channel (H, W) float."""
    return gaussian(_normalized(cyto), sigma=sigma)


def foreground(smooth_cyto, nuclei, *, factor):
    """Cell pixels: smoothed cytoplasm above ``factor`` x Otsu, or nucleus; holes filled."""
    fg = (smooth_cyto > factor * threshold_otsu(smooth_cyto)) | (nuclei > 0)
    return ndi.binary_fill_holes(fg)


def cells_from_seeds(smooth_cyto, nuclei, fg, *, surface, min_size):
    """Watershed from the nuclear seeds within the foreground; sequential labels (H, W) int32."""
    if surface == "intensity":
        height = -smooth_cyto
    elif surface == "gradient":
        height = sobel(smooth_cyto)
    else:
        raise ValueError(f"surface must be 'intensity' or 'gradient'; got {surface!r}")
    labels = watershed(height, nuclei, mask=fg)
    labels = _drop_small(labels, min_size)
    return relabel_sequential(labels)[0].astype(np.int32)


def segment_classical(image, params: ClassicalParams = ClassicalParams()):
    """Segment one two-channel field (H, W, 2), cytoplasm first; labels (H, W) int32.

    Examples
    --------
    >>> from cellpose_nb.data import make_synthetic
    >>> s = make_synthetic((128, 128), n_cells=6, diameter=30, seed=0)
    >>> segment_classical(s.image).shape
    (128, 128)
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] < 2:
        raise ValueError(f"need an (H, W, 2) image, cytoplasm then nuclei; got shape {image.shape}")
    nuclei = nuclear_seeds(image[..., NUCLEI], sigma=params.nuc_sigma,
                           min_distance=params.nuc_min_distance)
    smooth = cytoplasm_surface(image[..., CYTO], sigma=params.cyto_sigma)
    fg = foreground(smooth, nuclei, factor=params.cyto_factor)
    return cells_from_seeds(smooth, nuclei, fg, surface=params.surface, min_size=params.min_size)


def grid_search(images, truths, *, grid=None, progress=None):
    """The parameters with the best mean AP at ``SELECT_IOUS`` over ``images``.

    Returns ``(best ClassicalParams, table)`` where ``table`` lists every
    setting as a dict with its score, best first.  ``progress`` is called with
    a line of text now and then (e.g. ``print``).
    """
    from cil_split import selection_score  # benchmarks/baselines is on sys.path

    grid = dict(GRID if grid is None else grid)
    t0 = time.perf_counter()
    nuclei = {}
    for s, d in itertools.product(grid["nuc_sigma"], grid["nuc_min_distance"]):
        nuclei[s, d] = [nuclear_seeds(im[..., NUCLEI], sigma=s, min_distance=d) for im in images]
    smooth = {s: [cytoplasm_surface(im[..., CYTO], sigma=s) for im in images]
              for s in grid["cyto_sigma"]}
    table = []
    keys = list(grid)
    settings = list(itertools.product(*grid.values()))
    for k, values in enumerate(settings):
        p = ClassicalParams(**dict(zip(keys, values)))
        nuc, cyt = nuclei[p.nuc_sigma, p.nuc_min_distance], smooth[p.cyto_sigma]
        preds = [cells_from_seeds(c, n, foreground(c, n, factor=p.cyto_factor),
                                  surface=p.surface, min_size=p.min_size)
                 for c, n in zip(cyt, nuc)]
        table.append({**asdict(p), "score": selection_score(truths, preds)})
        if progress is not None and (k + 1) % 32 == 0:
            best = max(table, key=lambda r: r["score"])
            progress(f"  grid {k + 1}/{len(settings)}, best so far {best['score']:.3f} "
                     f"({time.perf_counter() - t0:.0f} s)")
    table.sort(key=lambda r: -r["score"])
    best = ClassicalParams(**{k: table[0][k] for k in keys})
    return best, table
