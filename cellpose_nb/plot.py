"""Matplotlib helpers: images, labels, flows, trajectories, errors, AP curves.

Every ``show_*`` / ``plot_*`` function draws on ``ax`` (a new figure and
axes when ``ax=None``) and returns the artists it made, so that callers,
tests and the widgets can update them (``artist.set_data(...)``) instead of
drawing again.  The NumPy helpers :func:`image_to_rgb`, :func:`label_colors`
and :func:`overlay_rgb` build the pixels the ``show_*`` functions display;
the widgets use them directly for cheap redraws.

Colours: a grayscale image is shown in gray; a two-channel image (cytoplasm,
nuclei) as an RGB composite with channel 0 in green and channel 1 in blue
(as the Cellpose GUI); three channels as RGB.  Labels get random but seeded
colours, so the same ``seed`` gives the same colours.
"""

from __future__ import annotations

import numpy as np

from cellpose_nb.flows import check_labels, flows_to_rgb
from cellpose_nb.normalize import move_channels_last, normalize_percentile

__all__ = [
    "image_to_rgb",
    "label_colors",
    "outline_mask",
    "overlay_rgb",
    "show_image",
    "show_labels",
    "overlay_labels",
    "show_flows",
    "flow_key_rgb",
    "show_flow_key",
    "flow_arrows",
    "quiver_flows",
    "show_trajectories",
    "error_outlines",
    "show_errors",
    "plot_ap_curve",
]

#: Default opacity of label colours over the image.
OVERLAY_ALPHA = 0.4
#: Seed of the random label colours.
COLOR_SEED = 0
#: Error colours (RGB in [0, 1]): true positives, false positives, false negatives.
TP_COLOR = (0.0, 0.9, 0.0)
FP_COLOR = (1.0, 0.1, 0.1)
FN_COLOR = (0.2, 0.4, 1.0)
#: Arrow length, as a fraction of the grid ``step``, of a unit flow vector.
ARROW_FRACTION = 0.8
#: Channel -> RGB mixing of a two-channel image: channel 0 green, channel 1 blue.
TWO_CHANNEL_RGB = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
#: Radius, in pixels, of the disc of the flow colour key.
FLOW_KEY_RADIUS = 32
#: Side of an inset flow key, as a fraction of the axes it sits on.
FLOW_KEY_INSET = 0.2


def _get_ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------------------- NumPy helpers
def outline_mask(labels):
    """Inner boundary pixels of every object, closed along the image border too.

    The same as ``skimage.segmentation.find_boundaries(mode="inner")`` of the
    labels padded by one background pixel: object pixels with a 4-neighbour
    of another label (or outside the image).  Plain NumPy shifts, so that
    the explorers can redraw outlines on every slider move.

    Examples
    --------
    >>> lab = np.zeros((4, 5), int); lab[:3, :3] = 1
    >>> outline_mask(lab).astype(int).tolist()
    [[1, 1, 1, 0, 0], [1, 0, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
    """
    p = np.pad(np.asarray(labels), 1)
    c = p[1:-1, 1:-1]
    return (c > 0) & ((c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:]))


def image_to_rgb(image, *, channel_axis=None):
    """Display colours of an image: percentile-normalised, clipped, as RGB.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
        Any real dtype.  C = 2 (cytoplasm, nuclei) is shown as green + blue,
        C >= 3 uses the first three channels as RGB.
    channel_axis : int, optional
        Channel axis of a 3-D image (default: last).

    Returns
    -------
    ndarray (H, W, 3) of float32 in [0, 1]
        Each channel's 1st percentile maps to 0 and its 99th to 1.

    Examples
    --------
    >>> rgb = image_to_rgb(np.arange(16.0).reshape(4, 4))
    >>> rgb.shape, float(rgb.min()), float(rgb.max())
    ((4, 4, 3), 0.0, 1.0)
    """
    chan = move_channels_last(np.asarray(image), channel_axis=channel_axis)
    norm = np.clip(normalize_percentile(chan, channel_axis=-1), 0.0, 1.0)
    n = norm.shape[-1]
    if n == 1:
        rgb = np.repeat(norm, 3, axis=-1)
    elif n == 2:
        rgb = norm @ TWO_CHANNEL_RGB
    else:
        rgb = norm[..., :3]
    return np.ascontiguousarray(rgb, dtype=np.float32)


def label_colors(n, *, seed=COLOR_SEED):
    """Random but reproducible colours for labels 0..n (0 is black).

    Parameters
    ----------
    n : int
        Largest label.
    seed : int
        Seed of the colours; the colour of label ``k`` depends only on
        ``k`` and ``seed``.

    Returns
    -------
    ndarray (n + 1, 3) of float32 in [0, 1]

    Examples
    --------
    >>> c = label_colors(3)
    >>> c.shape, c[0].tolist()
    ((4, 3), [0.0, 0.0, 0.0])
    >>> bool((label_colors(5)[:4] == c).all())   # growing n keeps the colours
    True
    """
    from matplotlib.colors import hsv_to_rgb

    # uniform doubles are drawn in sequence: row k is the same whatever n is
    hsv = np.random.default_rng(seed).uniform([0.0, 0.55, 0.75], [1.0, 1.0, 1.0], (int(n) + 1, 3))
    colors = hsv_to_rgb(hsv).astype(np.float32)
    colors[0] = 0.0
    return colors


def overlay_rgb(rgb, labels, *, alpha=OVERLAY_ALPHA, outlines=True, colors=None, seed=COLOR_SEED):
    """Blend label colours over an RGB image; outlines in full colour.

    Parameters
    ----------
    rgb : ndarray (H, W, 3) of float in [0, 1]
        The image, e.g. from :func:`image_to_rgb`.
    labels : ndarray (H, W) of int
    alpha : float
        Opacity of the label colours inside the objects.
    outlines : bool
        Paint the inner boundary of each object (:func:`outline_mask`) in its
        colour at full opacity.
    colors : ndarray (>= labels.max() + 1, 3), optional
        Colour table; default :func:`label_colors` with ``seed``.

    Returns
    -------
    ndarray (H, W, 3) of float32
        Equal to ``rgb`` where ``labels == 0``.

    Examples
    --------
    >>> rgb = np.full((4, 4, 3), 0.5, np.float32)
    >>> lab = np.zeros((4, 4), int); lab[1:3, 1:3] = 1
    >>> out = overlay_rgb(rgb, lab, outlines=False)
    >>> bool((out[0, 0] == 0.5).all()), bool((out[1, 1] != 0.5).any())
    (True, True)
    """
    lab = check_labels(labels)
    base = np.asarray(rgb, dtype=np.float32)
    if base.shape != lab.shape + (3,):
        raise ValueError(f"rgb must have shape {lab.shape + (3,)} to match labels; got {base.shape}")
    if colors is None:
        colors = label_colors(int(lab.max()) if lab.size else 0, seed=seed)
    colors = np.asarray(colors, dtype=np.float32)
    col = colors[lab]
    weight = np.where(lab > 0, np.float32(alpha), np.float32(0.0))[..., None]
    out = base + weight * (col - base)  # exactly ``base`` where the weight is 0
    if outlines:
        out = np.where(outline_mask(lab)[..., None], col, out)
    return out


# ----------------------------------------------------------------------------- plots
def show_image(image, *, ax=None, channel_axis=None, title=None):
    """Show an image, percentile-normalised (grayscale, or channels as RGB).

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
    ax : matplotlib Axes, optional
    channel_axis : int, optional
    title : str, optional

    Returns
    -------
    matplotlib.image.AxesImage

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> ax = Figure().subplots()
    >>> im = show_image(np.random.default_rng(0).random((8, 8, 2)), ax=ax)
    >>> im.get_array().shape
    (8, 8, 3)
    """
    ax = _get_ax(ax)
    rgb = image_to_rgb(image, channel_axis=channel_axis)
    if np.asarray(image).ndim == 2:
        artist = ax.imshow(rgb[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        artist = ax.imshow(rgb, interpolation="nearest")
    _bare(ax)
    if title:
        ax.set_title(title)
    return artist


def show_labels(labels, *, ax=None, seed=COLOR_SEED, title=None):
    """Show a label image in random (seeded) colours, background black.

    Returns
    -------
    matplotlib.image.AxesImage

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> lab = np.zeros((6, 6), int); lab[1:3, 1:3] = 1; lab[3:5, 3:5] = 2
    >>> im = show_labels(lab, ax=Figure().subplots())
    >>> im.get_array()[0, 0].tolist(), bool(im.get_array()[1, 1].any())
    ([0.0, 0.0, 0.0], True)
    """
    ax = _get_ax(ax)
    lab = check_labels(labels)
    colors = label_colors(int(lab.max()) if lab.size else 0, seed=seed)
    artist = ax.imshow(colors[lab], interpolation="nearest")
    _bare(ax)
    if title:
        ax.set_title(title)
    return artist


def overlay_labels(image, labels, *, ax=None, alpha=OVERLAY_ALPHA, outlines=True,
                   channel_axis=None, seed=COLOR_SEED, title=None):
    """Show label colours (and outlines) over an image.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
    labels : ndarray (H, W) of int
    ax : matplotlib Axes, optional
    alpha : float
        Opacity of the fill colours.
    outlines : bool
        Draw each object's inner boundary in its colour.
    channel_axis : int, optional
    seed : int
        Seed of the label colours.

    Returns
    -------
    matplotlib.image.AxesImage
        One RGB image; where ``labels == 0`` it equals ``image_to_rgb(image)``.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> img = np.random.default_rng(0).random((8, 8))
    >>> im = overlay_labels(img, np.zeros((8, 8), int), ax=Figure().subplots())
    >>> bool(np.array_equal(im.get_array(), image_to_rgb(img)))
    True
    """
    ax = _get_ax(ax)
    rgb = overlay_rgb(image_to_rgb(image, channel_axis=channel_axis), labels,
                      alpha=alpha, outlines=outlines, seed=seed)
    artist = ax.imshow(rgb, interpolation="nearest")
    _bare(ax)
    if title:
        ax.set_title(title)
    return artist


def flow_arrows(flows, *, step=8, mask=None):
    """Grid positions and vectors for a quiver plot of ``flows``.

    Returns ``(cols, rows, d_col, d_row)``, 1-D arrays of the grid points
    (every ``step`` pixels, offset by ``step // 2``) where the flow is
    non-zero (and ``mask`` is true).

    Examples
    --------
    >>> f = np.zeros((2, 8, 8)); f[0, 2, 6] = 1.0
    >>> [a.tolist() for a in flow_arrows(f, step=4)]
    [[6], [2], [0.0], [1.0]]
    >>> [a.tolist() for a in flow_arrows(f, step=4, mask=np.ones((8, 8), bool))][0]
    [2, 6, 2, 6]
    """
    f = np.asarray(flows)
    rows, cols = np.mgrid[step // 2:f.shape[1]:step, step // 2:f.shape[2]:step]
    rows, cols = rows.ravel(), cols.ravel()
    dr, dc = f[0][rows, cols], f[1][rows, cols]
    keep = ((dr != 0) | (dc != 0)) if mask is None else np.asarray(mask, bool)[rows, cols]
    return cols[keep], rows[keep], dc[keep], dr[keep]


def show_flows(flows, *, ax=None, arrows=False, step=8, mask=None, title=None):
    """Show a flow field as colour (angle -> hue, magnitude -> brightness).

    Parameters
    ----------
    flows : ndarray (2, H, W)
        (d_row, d_col), e.g. from :func:`cellpose_nb.flows.masks_to_flows`.
    ax : matplotlib Axes, optional
    arrows : bool
        Also draw arrows every ``step`` pixels where the flow is non-zero.
    step : int
        Arrow grid spacing in pixels; a unit vector is ``0.8 * step`` long.
    mask : ndarray (H, W) of bool, optional
        Pixels to colour (and give arrows); default where the flow is non-zero.

    Returns
    -------
    list of artists
        ``[AxesImage]``, plus a ``Quiver`` when ``arrows=True``.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from cellpose_nb.flows import masks_to_flows
    >>> lab = np.zeros((32, 32), int); lab[4:28, 4:28] = 1
    >>> artists = show_flows(masks_to_flows(lab), ax=Figure().subplots(), arrows=True, step=4)
    >>> [type(a).__name__ for a in artists]
    ['AxesImage', 'Quiver']
    """
    ax = _get_ax(ax)
    f = np.asarray(flows)
    artists = [ax.imshow(flows_to_rgb(f, mask=mask), interpolation="nearest")]
    if arrows:
        artists.append(quiver_flows(ax, f, step=step, mask=mask))
    _bare(ax)
    if title:
        ax.set_title(title)
    return artists


def flow_key_rgb(radius=FLOW_KEY_RADIUS):
    """The flow colour key: a disc where each pixel has the colour of a flow pointing to it.

    A pixel at (row, col) relative to the centre gets the colour that
    :func:`cellpose_nb.flows.flows_to_rgb` gives the unit flow pointing from
    the centre towards it (so "down" on an image is the colour of
    ``d_row = +1``); the centre and the outside of the disc are black.

    Examples
    --------
    >>> from cellpose_nb.flows import flows_to_rgb
    >>> key = flow_key_rgb(4)
    >>> key.shape
    (9, 9, 3)
    >>> bool(np.allclose(key[8, 4], flows_to_rgb(np.array([1.0, 0.0]).reshape(2, 1, 1))[0, 0]))
    True
    >>> float(key[0, 0].max()), float(key[4, 4].max())
    (0.0, 0.0)
    """
    rows, cols = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float64)
    dist = np.hypot(rows, cols)
    unit = np.stack([rows, cols]) / np.maximum(dist, 1.0)
    return flows_to_rgb(unit, mask=(dist <= radius) & (dist > 0))


def show_flow_key(ax=None, *, inset=False, radius=FLOW_KEY_RADIUS, title=None):
    """Draw the flow colour key (:func:`flow_key_rgb`), on ``ax`` or in a corner of it.

    Parameters
    ----------
    ax : matplotlib Axes, optional
    inset : bool
        Draw the key small, in the top-right corner of ``ax`` (a flow panel),
        instead of filling ``ax``.
    radius : int
        Radius of the disc in pixels.
    title : str, optional

    Returns
    -------
    AxesImage

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> ax = Figure().subplots()
    >>> key = show_flow_key(ax, inset=True)
    >>> key.axes is ax, len(ax.child_axes)
    (False, 1)
    """
    ax = _get_ax(ax)
    if inset:
        side = FLOW_KEY_INSET
        ax = ax.inset_axes([1.0 - side, 1.0 - side, side, side])
    artist = ax.imshow(flow_key_rgb(radius), interpolation="bilinear")
    _bare(ax)
    if inset:
        ax.set_frame_on(False)
    if title:
        ax.set_title(title)
    return artist


def quiver_flows(ax, flows, *, step=8, mask=None, color="white"):
    """Arrows of ``flows`` on ``ax`` (image coordinates: rows down); returns the Quiver.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> q = quiver_flows(Figure().subplots(), np.ones((2, 8, 8)), step=4)
    >>> q.N
    4
    """
    x, y, u, v = flow_arrows(flows, step=step, mask=mask)
    # angles="xy": a positive d_row points to larger row numbers, down on an image
    return ax.quiver(x, y, u, v, angles="xy", scale_units="xy", scale=1.0 / (ARROW_FRACTION * step),
                     color=color, width=0.004, headwidth=4)


def show_trajectories(image, trajectories, *, ax=None, color="yellow", linewidth=1.0,
                      channel_axis=None, title=None):
    """Draw pixel trajectories (from ``trace_points``) over an image.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C), or None
        Background; ``None`` draws on ``ax`` as it is.
    trajectories : ndarray (n_iter + 1, 2, N)
        (row, col) positions of N points over time.
    ax : matplotlib Axes, optional
    color : matplotlib colour

    Returns
    -------
    list of artists
        ``[AxesImage]`` (when ``image`` is given), one ``Line2D`` per point,
        then the start markers and the end markers (two ``Line2D``).

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from cellpose_nb.masks import trace_points
    >>> f = np.zeros((2, 10, 10), np.float32); f[1] = 0.5
    >>> traj = trace_points(f, [(2, 1), (6, 3)], n_iter=5)
    >>> artists = show_trajectories(np.zeros((10, 10)), traj, ax=Figure().subplots())
    >>> len(artists), artists[1].get_xdata()[-1].item()
    (5, 3.5)
    """
    ax = _get_ax(ax)
    traj = np.asarray(trajectories)
    if traj.ndim != 3 or traj.shape[1] != 2:
        raise ValueError(f"trajectories must have shape (n_iter + 1, 2, N); got {traj.shape}")
    artists = [] if image is None else [show_image(image, ax=ax, channel_axis=channel_axis)]
    for k in range(traj.shape[2]):
        (line,) = ax.plot(traj[:, 1, k], traj[:, 0, k], color=color, linewidth=linewidth)
        artists.append(line)
    (starts,) = ax.plot(traj[0, 1], traj[0, 0], "o", color=color, markersize=4, linestyle="none")
    (ends,) = ax.plot(traj[-1, 1], traj[-1, 0], "x", color="red", markersize=6, linestyle="none")
    artists += [starts, ends]
    _bare(ax)
    if title:
        ax.set_title(title)
    return artists


def error_outlines(true, pred, *, threshold=0.5):
    """Which objects are true positives, false positives and false negatives.

    Objects are paired one-to-one as in :func:`cellpose_nb.metrics.matching`
    (at ``threshold >= 0.5`` a pair above threshold is unique; below, the
    Hungarian assignment that maximises the number of pairs, then their IoU).

    Returns
    -------
    tp_pred, fp, fn : ndarray of int
        Ids of matched predicted objects, unmatched predicted objects and
        unmatched true objects.

    Examples
    --------
    >>> a = np.zeros((10, 10), int); a[:4] = 1; a[6:] = 2
    >>> b = np.zeros((10, 10), int); b[:4] = 5; b[5, :3] = 6
    >>> [x.tolist() for x in error_outlines(a, b)]
    [[5], [6], [2]]
    """
    from scipy.optimize import linear_sum_assignment

    from cellpose_nb.metrics import iou_matrix

    iou, t_ids, p_ids = iou_matrix(true, pred)
    if iou.size == 0:
        return p_ids[:0], p_ids, t_ids
    if threshold >= 0.5:
        rows, cols = np.nonzero(iou >= threshold)
    else:
        n_min = min(iou.shape)
        rows, cols = linear_sum_assignment(-(iou >= threshold).astype(float) - iou / (2 * n_min))
        ok = iou[rows, cols] >= threshold
        rows, cols = rows[ok], cols[ok]
    fp = np.setdiff1d(p_ids, p_ids[cols])
    fn = np.setdiff1d(t_ids, t_ids[rows])
    return np.sort(p_ids[cols]), fp, fn


def show_errors(true, pred, *, ax=None, threshold=0.5, image=None, channel_axis=None, title=None):
    """Outline matched (green), false-positive (red) and missed (blue) objects.

    Parameters
    ----------
    true, pred : ndarray (H, W) of int
    ax : matplotlib Axes, optional
    threshold : float
        IoU threshold of a match.
    image : ndarray, optional
        Background (percentile-normalised); default black.

    Returns
    -------
    matplotlib.image.AxesImage
        True-positive outlines are those of the predicted objects, false
        negatives those of the true objects.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> a = np.zeros((10, 10), int); a[:4] = 1; a[6:] = 2
    >>> b = np.zeros((10, 10), int); b[:4] = 5; b[5, :3] = 6
    >>> rgb = show_errors(a, b, ax=Figure().subplots()).get_array()
    >>> [np.allclose(rgb[r, 0], c) for r, c in ((0, TP_COLOR), (5, FP_COLOR), (9, FN_COLOR))]
    [True, True, True]
    """
    ax = _get_ax(ax)
    t, p = check_labels(true, name="true"), check_labels(pred, name="pred")
    tp_ids, fp_ids, fn_ids = error_outlines(t, p, threshold=threshold)
    rgb = (np.zeros(t.shape + (3,), np.float32) if image is None
           else image_to_rgb(image, channel_axis=channel_axis))
    for lab, ids, color in ((t, fn_ids, FN_COLOR), (p, fp_ids, FP_COLOR), (p, tp_ids, TP_COLOR)):
        if len(ids):
            edge = outline_mask(np.where(np.isin(lab, ids), lab, 0))
            rgb[edge] = color
    artist = ax.imshow(rgb, interpolation="nearest")
    _bare(ax)
    ax.set_title(title if title is not None else
                 f"IoU {threshold:g}: {len(tp_ids)} TP (green), {len(fp_ids)} FP (red), "
                 f"{len(fn_ids)} FN (blue)", fontsize="small")
    return artist


def plot_ap_curve(thresholds, ap, *, ax=None, label=None, marker="o"):
    """Average precision against IoU threshold.

    Parameters
    ----------
    thresholds : array-like (T,)
    ap : array-like (T,) or (n_curves, T)
        One curve per row (NaN values are left out of the line).
    label : str or sequence of str, optional
        Legend label(s); a legend is drawn when given.

    Returns
    -------
    list of matplotlib.lines.Line2D

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> lines = plot_ap_curve([0.5, 0.75, 0.9], [[0.9, 0.7, 0.3], [0.8, 0.5, 0.1]],
    ...                       ax=Figure().subplots(), label=["a", "b"])
    >>> len(lines), lines[1].get_ydata().tolist()
    (2, [0.8, 0.5, 0.1])
    """
    ax = _get_ax(ax)
    th = np.asarray(thresholds, dtype=float)
    curves = np.atleast_2d(np.asarray(ap, dtype=float))
    if curves.shape[-1] != th.shape[0]:
        raise ValueError(f"ap has {curves.shape[-1]} values per curve for {th.shape[0]} thresholds")
    labels = [label] if isinstance(label, str) or label is None else list(label)
    if len(labels) == 1 and len(curves) > 1:
        labels = labels * len(curves) if label is None else [f"{label} {k}" for k in range(len(curves))]
    lines = []
    for y, lab in zip(curves, labels):
        (line,) = ax.plot(th, y, marker=marker, label=lab)
        lines.append(line)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if label is not None:
        ax.legend()
    return lines
