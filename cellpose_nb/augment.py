"""Random rotate / scale / flip / crop of an image with its labels and flows.

Training sees every image many times, each time through a different random
similarity transform (Cellpose's ``transforms.random_rotate_and_resize``):

* a flip of the columns (probability 1/2),
* a rotation by an angle uniform in [0, 2 pi),
* a zoom by ``rescale * u``, ``u`` uniform in ``[1 - scale_range/2, 1 + scale_range/2]``
  (``rescale = diam_mean / diameter`` brings the cells to the model's size),
* a random translation, so that a crop of ``out_size`` lands anywhere on a
  scaled image larger than the crop (a smaller one is centred and padded with 0).

All of it is ONE affine map, applied once per array: bilinear for the image,
nearest neighbour for the labels.

Flows are vectors, not intensities: warping them moves the arrows to their
new place but does not turn them.  With cached ``flows`` (computed once per
training image) each warped arrow is also multiplied by the linear part of
the map (rotation, flip, zoom), then renormalised to unit length on the
warped objects and zeroed elsewhere.  For a similarity transform this agrees
with flows recomputed from the warped labels (a test checks it), at a tiny
fraction of the cost.  ``recompute_flows=True`` recomputes them instead.
(Objects cut by the crop edge are the exception: their warped flows still
point at the centre of the whole object, as in Cellpose's training.)

Coordinates are (row, col) throughout; the map sends an input pixel ``i`` to
the output pixel ``o = L (i - c_in) + c_out + shift``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from cellpose_nb.flows import masks_to_flows
from cellpose_nb.labels import check_labels

__all__ = ["Augmented", "similarity_matrix", "warp_sample", "random_transform"]

#: Output size of a training crop (Cellpose's ``bsize``).
CROP_SIZE = (224, 224)
#: Zoom factors are uniform in [1 - SCALE_RANGE/2, 1 + SCALE_RANGE/2] (Cellpose: 0.5).
SCALE_RANGE = 0.5
#: Warped flow vectors shorter than this are left at zero rather than normalised.
_MIN_FLOW_NORM = 1e-6


class Augmented(NamedTuple):
    """One augmented training sample.

    Attributes
    ----------
    image : ndarray (C, h, w) of float32
    labels : ndarray (h, w) of int32
    flows : ndarray (2, h, w) of float32 or None
        Unit length on objects, 0 elsewhere; None when no flows were asked for.
    scale : float
        Total zoom applied (``rescale`` times the random factor): a cell of
        diameter ``d`` in the input has diameter ``scale * d`` in the output.
    """

    image: np.ndarray
    labels: np.ndarray
    flows: np.ndarray | None
    scale: float


def similarity_matrix(in_shape, *, out_size=CROP_SIZE, angle=0.0, scale=1.0, flip=False,
                      shift=(0.0, 0.0)):
    """Homogeneous 3x3 matrix of the map input (row, col) -> output (row, col).

    The input centre goes to the output centre plus ``shift``; around it the
    columns are flipped (if ``flip``), then rotated by ``angle`` and zoomed by
    ``scale``.

    Parameters
    ----------
    in_shape : (int, int)
        (H, W) of the input.
    out_size : (int, int)
        (h, w) of the output.
    angle : float
        Rotation in radians.
    scale : float
        Zoom factor (> 0).
    flip : bool
        Mirror the columns before rotating.
    shift : (float, float)
        Translation of the output, in output pixels (rows, cols).

    Returns
    -------
    ndarray (3, 3) of float64

    Examples
    --------
    >>> m = similarity_matrix((10, 10), out_size=(10, 10), angle=np.pi / 2)
    >>> (m @ [4.5, 9.0, 1.0]).round(6).tolist()   # +90 deg: right edge -> top (counter-clockwise)
    [0.0, 4.5, 1.0]
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale!r}")
    c, s = np.cos(angle), np.sin(angle)
    linear = scale * np.array([[c, -s], [s, c]]) @ np.diag([1.0, -1.0 if flip else 1.0])
    c_in = (np.asarray(in_shape[:2], float) - 1) / 2
    c_out = (np.asarray(out_size, float) - 1) / 2 + np.asarray(shift, float)
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = c_out - linear @ c_in
    return m


def _warp(array, inverse, out_size, order):
    """Warp every channel of (C, H, W) ``array`` with the output->input map ``inverse``."""
    return np.stack([
        ndi.affine_transform(a, inverse[:2, :2], offset=inverse[:2, 2], output_shape=out_size,
                             order=order, mode="constant", cval=0, prefilter=False)
        for a in array])


def _as_channels(image):
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W) or (H, W); got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number) or img.dtype == bool:
        raise TypeError(f"image must be numeric; got dtype {img.dtype}")
    return img


def warp_sample(image, labels, matrix, *, flows=None, out_size=CROP_SIZE,
                recompute_flows=False):
    """Apply one affine map to an image, its labels and (optionally) its flows.

    Parameters
    ----------
    image : ndarray (C, H, W) or (H, W)
        Warped bilinearly, zero outside the input.
    labels : ndarray (H, W) of int
        Warped by nearest neighbour.
    matrix : ndarray (3, 3)
        Input -> output map, e.g. from :func:`similarity_matrix`.
    flows : ndarray (2, H, W), optional
        Unit flows of ``labels`` (d_row, d_col).  Warped bilinearly and turned
        by the linear part of ``matrix``, renormalised on the warped objects,
        zero elsewhere.
    out_size : (int, int)
        (h, w) of the output.
    recompute_flows : bool
        Compute the flows of the warped labels with
        :func:`cellpose_nb.flows.masks_to_flows` instead (``flows`` is ignored).

    Returns
    -------
    Augmented
        ``scale`` is the zoom of ``matrix`` (square root of its determinant).

    Examples
    --------
    >>> lab = np.zeros((20, 20), np.int32); lab[5:12, 6:15] = 1
    >>> m = similarity_matrix(lab.shape, out_size=(20, 20), flip=True)
    >>> out = warp_sample(lab[None].astype(np.float32), lab, m, out_size=(20, 20))
    >>> bool((out.labels == lab[:, ::-1]).all()), out.flows is None
    (True, True)
    """
    img = _as_channels(image)
    lab = check_labels(labels)
    if img.shape[1:] != lab.shape:
        raise ValueError(f"image shape {img.shape[1:]} and labels shape {lab.shape} differ")
    matrix = np.asarray(matrix, float)
    if matrix.shape != (3, 3):
        raise ValueError(f"matrix must be a (3, 3) homogeneous matrix; got shape {matrix.shape}")
    out_size = (int(out_size[0]), int(out_size[1]))
    linear = matrix[:2, :2]
    det = np.linalg.det(linear)
    if not abs(det) > 0:
        raise ValueError("matrix is singular: cannot warp")
    inverse = np.linalg.inv(matrix)
    image_w = _warp(img.astype(np.float32, copy=False), inverse, out_size, 1)
    labels_w = _warp(lab[None], inverse, out_size, 0)[0].astype(np.int32, copy=False)
    flows_w = None
    if recompute_flows:
        flows_w = masks_to_flows(labels_w)
    elif flows is not None:
        f = np.asarray(flows, np.float32)
        if f.shape != (2,) + lab.shape:
            raise ValueError(f"flows must have shape {(2,) + lab.shape}; got {f.shape}")
        flows_w = _turn_flows(_warp(f, inverse, out_size, 1), linear, labels_w > 0)
    return Augmented(image_w, labels_w, flows_w, float(np.sqrt(abs(det))))


def _turn_flows(flows, linear, inside):
    """Multiply each (d_row, d_col) vector by ``linear``; unit length inside, 0 outside."""
    turned = np.tensordot(linear.astype(np.float32), flows, axes=1)
    norm = np.sqrt((turned**2).sum(axis=0))
    keep = inside & (norm > _MIN_FLOW_NORM)
    return np.where(keep, turned / np.where(keep, norm, 1), 0).astype(np.float32)


def random_transform(image, labels, *, flows=None, rng, out_size=CROP_SIZE,
                     scale_range=SCALE_RANGE, rescale=1.0, do_flip=True, rotate=True,
                     recompute_flows=False):
    """Random flip + rotation + zoom + crop as one affine warp (Cellpose's augmentation).

    Parameters
    ----------
    image : ndarray (C, H, W) or (H, W)
        E.g. the network input of :func:`cellpose_nb.normalize.to_network_input`.
    labels : ndarray (H, W) of int
    flows : ndarray (2, H, W), optional
        Cached unit flows of ``labels``; they are warped and turned with the
        image (see :func:`warp_sample`).
    rng : numpy.random.Generator
        The only source of randomness: the same generator state gives the
        same result.
    out_size : (int, int)
        (h, w) of the crop.
    scale_range : float
        The random zoom is uniform in ``[1 - scale_range/2, 1 + scale_range/2]``.
    rescale : float
        Extra zoom, ``diam_mean / diameter`` of this image, so that its cells
        come out at the model's mean diameter.
    do_flip : bool
        Mirror the columns with probability 1/2.
    rotate : bool
        Rotate by a uniform random angle.
    recompute_flows : bool
        Recompute flows from the warped labels instead of warping ``flows``.

    Returns
    -------
    Augmented
        ``image`` (C, h, w) float32, ``labels`` (h, w) int32, ``flows``
        (2, h, w) float32 or None, ``scale``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> lab = np.zeros((64, 64), np.int32); lab[10:30, 20:40] = 1
    >>> out = random_transform(lab[None] * 1.0, lab, rng=rng, out_size=(32, 32),
    ...                        recompute_flows=True)
    >>> out.image.shape, out.labels.dtype, out.flows.shape
    ((1, 32, 32), dtype('int32'), (2, 32, 32))
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); "
                        f"got {type(rng).__name__}")
    if not 0 <= scale_range < 2:
        raise ValueError(f"scale_range must be in [0, 2); got {scale_range!r}")
    if not rescale > 0:
        raise ValueError(f"rescale must be > 0; got {rescale!r}")
    in_shape = np.asarray(labels).shape
    # always draw the same numbers in the same order, whatever the switches
    flip, angle, zoom, offset = rng.random(), rng.random(), rng.random(), rng.random(2)
    scale = rescale * (1 - scale_range / 2 + scale_range * zoom)
    room = np.maximum(0.0, np.asarray(in_shape[:2], float) * scale - np.asarray(out_size))
    matrix = similarity_matrix(
        in_shape, out_size=out_size, angle=2 * np.pi * angle if rotate else 0.0, scale=scale,
        flip=bool(do_flip and flip > 0.5), shift=(offset - 0.5) * room)
    return warp_sample(image, labels, matrix, flows=flows, out_size=out_size,
                       recompute_flows=recompute_flows)
