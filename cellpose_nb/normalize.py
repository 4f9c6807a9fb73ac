"""Percentile normalisation and the network's two-channel input.

Cellpose maps each channel's 1st percentile to 0 and its 99th to 1, per
image, so that the network sees the same intensity range whatever the
microscope.  The network takes two channels: cytoplasm (or the only
channel) and nuclei (zeros when there is none).
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_percentile", "to_network_input", "move_channels_last", "dark_objects",
           "upper_percentile"]

#: Default percentiles mapped to 0 and 1.
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0
#: Ranges narrower than this are treated as a constant channel (-> zeros).
_FLAT = 1e-12
#: Upper percentile used instead of :data:`HIGH_PERCENTILE` for a sparse channel.
SPARSE_HIGH_PERCENTILE = 99.9
#: A channel is sparse when its :data:`SPARSE_HIGH_PERCENTILE` lies more than
#: this many 1st-99th percentile ranges above its 1st percentile.
SPARSE_RATIO = 5.0


def _check_finite(image):
    arr = np.asarray(image)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"image must be a numeric array; got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError("image must be real-valued; got a complex array")
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"image contains {n_bad} NaN or inf values; fix or mask them first")
    return arr


#: a 3-D image whose channel axis is not given has its channels last only if there are
#: at most this many (gray, 2-channel, RGB, RGBA); anything longer looks like a
#: channels-first image or a z-stack, and guessing would give masks of the wrong shape
MAX_GUESSED_CHANNELS = 4


def move_channels_last(image, *, channel_axis=None):
    """Return ``image`` as (H, W, C), C >= 1.

    Parameters
    ----------
    image : ndarray (H, W) or 3-D with a channel axis
    channel_axis : int, optional
        Axis holding the channels of a 3-D image.  Default: the last axis,
        if it has at most ``MAX_GUESSED_CHANNELS`` entries; a longer last axis
        raises (pass ``channel_axis`` to say where the channels are).

    Examples
    --------
    >>> move_channels_last(np.zeros((2, 5, 6)), channel_axis=0).shape
    (5, 6, 2)
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        if channel_axis is not None:
            raise ValueError(f"channel_axis={channel_axis} given for a 2-D image of shape {arr.shape}")
        return arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C) with channel_axis; got shape {arr.shape}")
    if channel_axis is None and arr.shape[-1] > MAX_GUESSED_CHANNELS:
        raise ValueError(
            f"image of shape {arr.shape} would be read as {arr.shape[0]} x {arr.shape[1]} "
            f"pixels with {arr.shape[2]} channels (more than {MAX_GUESSED_CHANNELS}, so "
            f"probably not); if the channels are on another axis pass channel_axis "
            f"(--channel-axis), e.g. 0 for a channels-first image; a z-stack is a volume, "
            f"not a 2-D image"
        )
    axis = -1 if channel_axis is None else channel_axis
    if not -3 <= axis < 3:
        raise ValueError(f"channel_axis={channel_axis} is out of range for shape {arr.shape}")
    return np.moveaxis(arr, axis, -1)


def normalize_percentile(image, *, low=LOW_PERCENTILE, high=HIGH_PERCENTILE, channel_axis=None):
    """Map each channel's ``low`` percentile to 0 and its ``high`` percentile to 1.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
        Any real dtype.  NaN or inf raise.
    low, high : float
        Percentiles in [0, 100], ``low < high``.
    channel_axis : int, optional
        Channel axis of a 3-D image (default: last).  Channels are normalised
        separately; the output keeps the input's layout.

    Returns
    -------
    ndarray of float32, same shape as ``image``
        Values are not clipped.  A constant channel becomes zeros.

    Examples
    --------
    >>> x = np.arange(101, dtype=np.uint8).reshape(1, 101)
    >>> y = normalize_percentile(x)
    >>> float(y[0, 1]), float(y[0, 99])
    (0.0, 1.0)
    >>> float(normalize_percentile(np.full((3, 3), 7.0)).max())   # constant -> zeros
    0.0
    """
    if not (0 <= low < high <= 100):
        raise ValueError(f"need 0 <= low < high <= 100; got low={low}, high={high}")
    arr = _check_finite(image)
    if arr.ndim == 2 and channel_axis is None:
        return _normalize_channel(arr, low, high)
    chan = move_channels_last(arr, channel_axis=channel_axis)
    out = np.stack([_normalize_channel(chan[..., c], low, high) for c in range(chan.shape[-1])], -1)
    return np.moveaxis(out, -1, -1 if channel_axis is None else channel_axis)


def upper_percentile(channel, *, low=LOW_PERCENTILE, high=HIGH_PERCENTILE,
                     sparse_high=SPARSE_HIGH_PERCENTILE, ratio=SPARSE_RATIO) -> float:
    """The percentile that :func:`to_network_input` maps to 1 for a channel.

    Percentile normalisation assumes that the bright objects cover more than
    ``100 - high`` percent of the image.  When they cover less (two nuclei in
    a large dark field), the 99th percentile is background: the objects end
    up 10 to 60 times brighter than the network has ever seen and it finds
    nothing.  Such a channel is recognised by its ``sparse_high`` percentile
    lying more than ``ratio`` times the ``low``-``high`` range above the
    ``low`` percentile; it is then normalised to its ``sparse_high``
    percentile instead.  On the 581 DSB2018 training images this happens for
    7 fluorescence images whose nuclei cover 0.3 to 0.8 % of the field.

    Returns
    -------
    float
        ``high`` or ``sparse_high``.

    Examples
    --------
    >>> dense = np.zeros((100, 100)); dense[:, :30] = 1.0       # 30 % objects
    >>> sparse = np.zeros((100, 100)); sparse[:5, :5] = 1.0     # 0.25 % objects
    >>> upper_percentile(dense), upper_percentile(sparse + 0.01 * (np.arange(100) % 7))
    (99.0, 99.9)
    """
    x = np.asarray(channel).astype(np.float32)
    lo, hi, top = np.percentile(x, [low, high, sparse_high])
    return float(sparse_high) if _is_sparse(lo, hi, top, ratio) else float(high)


def _is_sparse(lo, hi, top, ratio):
    """The rule of :func:`upper_percentile`, on a channel's three percentile values."""
    if hi - lo < _FLAT:  # objects on an exactly flat background
        return top - lo >= _FLAT
    return (top - lo) > ratio * (hi - lo)


def dark_objects(channel, *, low=LOW_PERCENTILE, high=HIGH_PERCENTILE) -> bool:
    """Guess whether the objects of a channel are dark on a light background.

    The rule behind ``invert="auto"``: clip the channel to its ``low``-``high``
    percentiles and look at the skewness of its intensities.  Bright objects
    on a dark background (fluorescence) give a long bright tail (skewness > 0);
    dark nuclei on a light background (brightfield, H&E histology converted to
    gray) give a long dark tail (skewness < 0).  On the 581 DSB2018 training
    images this matches the modality for all 473 fluorescence and 14
    brightfield images and 93 of the 94 histology images.  It is a guess:
    pass ``invert=True`` or ``False`` when you know.

    Parameters
    ----------
    channel : ndarray (H, W)
    low, high : float
        Percentiles the intensities are clipped to (outliers ignored).

    Returns
    -------
    bool

    Examples
    --------
    >>> img = np.zeros((64, 64)); img[20:30, 20:30] = 1.0   # one bright object
    >>> dark_objects(img), dark_objects(1.0 - img)
    (False, True)
    """
    x = np.asarray(channel, np.float64)
    if x.ndim != 2:
        raise ValueError(f"dark_objects expects one (H, W) channel; got shape {x.shape}")
    lo, hi = np.percentile(x, [low, high])
    if hi - lo < _FLAT:
        return False
    x = np.clip(x, lo, hi)
    centred = x - x.mean()
    return bool(np.mean(centred ** 3) < 0)


def _normalize_channel(x, low, high, *, sparse_aware=False):
    """``x`` with its ``low`` percentile at 0 and its ``high`` percentile at 1
    (with ``sparse_aware``, :data:`SPARSE_HIGH_PERCENTILE` for a sparse channel,
    from the same single percentile pass)."""
    x = x.astype(np.float32)
    if sparse_aware:
        lo, hi, top = np.percentile(x, [low, high, SPARSE_HIGH_PERCENTILE])
        hi = top if _is_sparse(lo, hi, top, SPARSE_RATIO) else hi
    else:
        lo, hi = np.percentile(x, [low, high])
    if hi - lo < _FLAT:
        return np.zeros_like(x)
    return (x - np.float32(lo)) / np.float32(hi - lo)


def to_network_input(image, *, channels=(0, None), channel_axis=None, normalize=True, invert=False,
                     sparse_aware=True):
    """Build the network's (2, H, W) float32 input: cytoplasm, nuclei.

    Parameters
    ----------
    image : ndarray (H, W) grayscale, or (H, W, C) / channel_axis for colour and
        multi-channel images.
    channels : (int or None, int or None)
        Index of the cytoplasm (or only) channel and of the nuclear channel;
        ``None`` for the nuclear channel fills it with zeros.  For an RGB image
        ``channels=("gray", None)`` uses its luminance.  A 2-D image ignores
        the indices other than ``None`` (and ``"gray"`` is the image itself).
    channel_axis : int, optional
        Channel axis of a 3-D image (default: last).
    normalize : bool
        Percentile-normalise each channel (1st -> 0, 99th -> 1).
    sparse_aware : bool
        With ``normalize``, map a sparse channel's 99.9th percentile to 1
        instead of its 99th (see :func:`upper_percentile`).  ``False`` is
        Cellpose's fixed 1st-99th normalisation.
    invert : bool or "auto"
        Invert the first channel (``1 - x`` after normalising), e.g. for
        histology where nuclei are dark on a light background.  ``"auto"``
        inverts it when :func:`dark_objects` finds dark objects on a light
        background.

    Returns
    -------
    ndarray (2, H, W) of float32

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.random((8, 9, 3))
    >>> to_network_input(img, channels=(2, 0)).shape
    (2, 8, 9)
    >>> float(np.abs(to_network_input(img[..., 0])[1]).max())   # grayscale: no nuclei
    0.0
    """
    arr = _check_finite(image)
    if not (isinstance(invert, (bool, int, np.bool_, np.integer)) or invert == "auto"):
        raise ValueError(f"invert must be True, False or 'auto'; got {invert!r}")
    if len(channels) != 2:
        raise ValueError(f"channels must be a pair (cytoplasm, nuclei); got {channels!r}")
    chan = move_channels_last(arr, channel_axis=channel_axis)
    h, w, n = chan.shape
    out = np.zeros((2, h, w), np.float32)
    for k, c in enumerate(channels):
        if c is None:
            if k == 0:
                raise ValueError("the first channel (cytoplasm or only channel) cannot be None")
            continue
        if n == 1 and k == 1:  # a grayscale image has no nuclear channel
            continue
        if c == "gray" and n == 1:
            x = chan[..., 0]
        elif c == "gray":
            if n not in (3, 4):
                raise ValueError(
                    f"channels='gray' averages the colours of an RGB(A) image, but the image "
                    f"of shape {arr.shape} was read as {h} x {w} pixels with {n} channels; "
                    f"pass channels=(0, None) for its first channel alone, or (0, 1) for "
                    f"cytoplasm + nuclei (--channels 0 1)")
            x = chan[..., :3].astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32)
        elif n == 1:
            x = chan[..., 0]
        elif isinstance(c, (int, np.integer)) and -n <= c < n:
            x = chan[..., c]
        else:
            raise ValueError(f"channel index {c!r} is out of range for an image of shape {arr.shape} "
                             f"with {n} channels (valid: 0 to {n - 1})")
        if normalize:
            out[k] = _normalize_channel(x, LOW_PERCENTILE, HIGH_PERCENTILE, sparse_aware=sparse_aware)
        else:
            out[k] = x
    if invert == "auto":
        invert = dark_objects(out[0])
    if invert:
        out[0] = (1.0 if normalize else out[0].max()) - out[0]
    return out
