"""What goes into a BioImage Model Zoo package besides the weights: test data, cover, documentation.

Pure numpy (and scikit-image for the rescaling): the package's input tensor is
the raw channels the model reads, its declared pre-processing is
:func:`scale_range` (bioimage.io's ``scale_range``, per channel and per sample),
and the test image is a bundled sample zoomed so that its cells have the
model's ``diam_mean``.
"""

from __future__ import annotations

import numpy as np

from cellpose_nb.normalize import HIGH_PERCENTILE, LOW_PERCENTILE, to_network_input

TEST_SIZE = 128  # largest side (px) of the test image; cropped to a multiple of the network's
CROP_STEP = 16  # px between the test crops compared by _busiest_crop
MIN_INPUT_SIZE = 64  # smallest input side (px) the package declares (rounded up to a multiple)
SCALE_RANGE_EPS = 1e-6  # bioimage.io scale_range's epsilon: (x - lo) / (hi - lo + eps)
SAMPLE_FOR_INPUTS = {1: "fluorescence", 2: "whole_cells"}  # bundled sample per input channels
COVER_ALPHA = 0.45  # opacity of the mask colours on the cover
OUTLINE_RGB = (255, 255, 0)  # mask outlines on the cover (yellow)


def n_inputs(recipe) -> int:
    """Channels of the package's input tensor: 1 without a nuclear channel, else 2.

    Examples
    --------
    >>> n_inputs({"channels": ["gray", None]}), n_inputs({"channels": [0, 1]}), n_inputs(None)
    (1, 2, 1)
    """
    channels = (recipe or {}).get("channels", (0, None))
    return 1 if channels[1] is None else 2


def package_input(image, recipe, *, channel_axis=None) -> np.ndarray:
    """The raw (not normalised) channels of ``image`` that the package's input holds.

    The model's input recipe picks them (``channels``; ``"gray"`` is the RGB
    luminance), as :func:`cellpose_nb.predict.segment` does before normalising.

    Returns
    -------
    ndarray (n_inputs(recipe), H, W) of float32

    Examples
    --------
    >>> img = np.random.default_rng(0).random((6, 8, 3))
    >>> package_input(img, {"channels": [2, 0]}).shape, package_input(img, None).shape
    ((2, 6, 8), (1, 6, 8))
    """
    channels = tuple((recipe or {}).get("channels", (0, None)))
    x = to_network_input(image, channels=channels, channel_axis=channel_axis, normalize=False)
    return x[:n_inputs(recipe)]


def scale_range(x) -> np.ndarray:
    """The package's declared pre-processing, in numpy: each channel's 1st percentile
    to 0 and 99th to 1, as bioimage.io's ``scale_range`` (with its epsilon).

    Parameters
    ----------
    x : ndarray (..., C, H, W)

    Examples
    --------
    >>> y = scale_range(np.arange(101, dtype=np.float32).reshape(1, 1, 101))
    >>> round(float(y[0, 0, 1]), 4), round(float(y[0, 0, 99]), 4)
    (0.0, 1.0)
    """
    x = np.asarray(x, np.float32)
    lo, hi = np.percentile(x, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=(-2, -1), keepdims=True)
    return ((x - lo) / (hi - lo + SCALE_RANGE_EPS)).astype(np.float32)


def crop_to_multiple(x, multiple: int, *, max_size: int = TEST_SIZE) -> np.ndarray:
    """The centre of ``x`` (..., H, W), each side at most ``max_size`` and a multiple of ``multiple``.

    Examples
    --------
    >>> crop_to_multiple(np.zeros((1, 300, 90)), 16).shape
    (1, 128, 80)
    """
    out = np.asarray(x)
    for axis in (-2, -1):
        n = out.shape[axis]
        keep = min(n, max_size) // multiple * multiple
        if keep == 0:
            raise ValueError(f"the test image has a side of {n} px; it needs at least {multiple} "
                             f"(the network halves it {int(np.log2(multiple))} times)")
        start = (n - keep) // 2
        out = np.take(out, np.arange(start, start + keep), axis=axis)
    return out


def sample_test_input(recipe, diam_mean: float, multiple: int) -> np.ndarray:
    """A bundled sample (DSB2018 nuclei for one channel, a CIL field for two) as the
    package's raw input, zoomed so that its cells are ``diam_mean`` px wide, cropped.

    Returns
    -------
    ndarray (n_inputs(recipe), H, W) of float32

    Examples
    --------
    >>> sample_test_input({"channels": ["gray", None]}, 17.0, 8).shape
    (1, 128, 128)
    """
    from skimage.transform import rescale

    from cellpose_nb.data import load_sample
    from cellpose_nb.predict import median_diameter

    sample = load_sample(SAMPLE_FOR_INPUTS[n_inputs(recipe)])
    x = package_input(sample.image, recipe)
    zoom = float(diam_mean) / median_diameter(sample.labels)
    x = np.stack([rescale(c, zoom, order=1, preserve_range=True, anti_aliasing=False)
                  for c in x]).astype(np.float32)
    labels = rescale(sample.labels, zoom, order=0, preserve_range=True, anti_aliasing=False)
    return _busiest_crop(x, labels.astype(np.int64), multiple)


def _busiest_crop(x, labels, multiple):
    """The window of ``crop_to_multiple``'s size that holds the most whole objects."""
    size = [min(n, TEST_SIZE) // multiple * multiple for n in x.shape[-2:]]
    if min(size) == 0:
        return crop_to_multiple(x, multiple)  # raises, naming the side
    best, corner = -1, (0, 0)
    for r in range(0, x.shape[-2] - size[0] + 1, CROP_STEP):
        for c in range(0, x.shape[-1] - size[1] + 1, CROP_STEP):
            window = labels[r:r + size[0], c:c + size[1]]
            edge = np.concatenate([window[0], window[-1], window[:, 0], window[:, -1]])
            n = len(np.setdiff1d(np.unique(window), np.unique(edge)))  # objects not cut
            if n > best:
                best, corner = n, (r, c)
    r, c = corner
    return x[..., r:r + size[0], c:c + size[1]]


def cover_image(channel, labels) -> np.ndarray:
    """A 2:1 cover: the (normalised) input on the left, with coloured masks and outlines on the right.

    Parameters
    ----------
    channel : ndarray (H, W), about 0..1
    labels : ndarray (H, W) of int

    Returns
    -------
    ndarray (H, 2 W, 3) of uint8

    Examples
    --------
    >>> lab = np.zeros((8, 8), int); lab[2:6, 2:6] = 1
    >>> cover_image(np.random.default_rng(0).random((8, 8)), lab).shape
    (8, 16, 3)
    """
    from skimage.segmentation import find_boundaries

    gray = (np.clip(np.asarray(channel, np.float32), 0, 1) * 255).astype(np.uint8)
    left = np.repeat(gray[..., None], 3, axis=-1)
    lab = np.asarray(labels)
    rng = np.random.default_rng(0)  # fixed colours: the same cover for the same masks
    palette = rng.integers(60, 256, size=(int(lab.max()) + 1, 3)).astype(np.float32)
    right = left.astype(np.float32)
    inside = lab > 0
    right[inside] = (1 - COVER_ALPHA) * right[inside] + COVER_ALPHA * palette[lab[inside]]
    right[find_boundaries(lab, mode="inner")] = OUTLINE_RGB
    return np.concatenate([left, right.astype(np.uint8)], axis=1)


def documentation(*, name, diam_mean, channel_names, invert, thresholds, training_data,
                  validation, n_cells) -> str:
    """The package's documentation page (Markdown, with the "Validation" section bioimage.io asks for).

    Examples
    --------
    >>> text = documentation(name="m", diam_mean=17.0, channel_names=["gray"], invert=False,
    ...                      thresholds={"cellprob_threshold": 0.0, "flow_threshold": 0.4},
    ...                      training_data=None, validation=None, n_cells=3)
    >>> "## Validation" in text and "17 px" in text
    True
    """
    inputs = " + ".join(channel_names)
    invert_line = {True: "The first channel is inverted after normalisation "
                         "(dark objects on a light background).",
                   "auto": "The model was trained with `invert=\"auto\"`: cellpose_nb inverts "
                           "images with dark objects on a light background (histology, "
                           "brightfield) before the network. The package cannot decide this "
                           "per image: invert such images yourself before giving them to it.",
                   False: ""}[invert]
    data = ("not recorded" if training_data is None else
            f"{training_data['name']} ({training_data['license']}): {training_data['description']}")
    valid = ("No validation result is recorded with this model." if validation is None else
             f"Mean average precision {validation['mean_ap']:.3f} at IoU "
             f"{validation['iou_threshold']:g} (per-image AP = TP / (TP + FP + FN), averaged over "
             f"the held-out validation images of the training data, at the tuned thresholds).")
    return f"""# {name}

A Cellpose-style residual U-Net (Stringer et al. 2021), trained and exported with
cellpose_nb. It predicts, for every pixel, a flow pointing to the centre of its cell
and a cell probability; following the flows gives one mask per cell.

## Input

`input`: (batch, channel, y, x), channels {inputs}, any intensity range: each
channel is scaled so that its 1st percentile is 0 and its 99th percentile is 1
(`scale_range`). {invert_line}

**Scale.** The package runs at the image's own scale. The model expects cells
about **{diam_mean:g} px** in diameter: zoom your image by {diam_mean:g} / (your cell
diameter in px) first. Height and width must be multiples of the step declared
in `rdf.yaml`; pad or crop otherwise.

## Outputs

- `masks`: (batch, 1, y, x) uint16 labels, 0 background, 1..N cells, from the
  `cellpose_flow_dynamics` post-processing step of bioimage.io (it runs Cellpose's
  own flow following, so `pip install cellpose` where the package runs), with
  cellprob threshold {thresholds['cellprob_threshold']:g}, flow threshold
  {thresholds['flow_threshold']:g} (the model's tuned values) and 200 iterations.
- `flows`: (batch, 3, y, x) float32, the raw network output: 5 x row flow,
  5 x column flow, cell-probability logit. Consumers without the post-processing
  step (deepImageJ, QuPath) get these.

The test image holds {n_cells} cells.

## Training data

{data}

## Validation

{valid}
Check the masks on a few of your own images against hand-drawn ones
(`cellpose-nb evaluate`) before trusting them on new data.

## Limits

- No rescaling, no tiling, no test-time flips: cellpose_nb's `segment` does these
  (load this package with `cellpose_nb.bioimageio.load_bioimageio`).
- Plain 1st-99th percentile normalisation; cellpose_nb's default also recognises
  sparse fields (99.9th percentile), which the package cannot express.
"""
