"""Augmentation: invariants, exact special cases, and the vector rotation of cached flows."""

import numpy as np
import pytest
from skimage.segmentation import clear_border

from cellpose_nb import augment
from cellpose_nb.augment import random_transform, similarity_matrix, warp_sample
from cellpose_nb.data import make_synthetic
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.train import median_diameter


@pytest.fixture(scope="module")
def sample():
    s = make_synthetic((128, 128), n_cells=12, diameter=24, kind="cyto", seed=3)
    image = np.moveaxis(s.image, -1, 0).copy()
    return image, s.labels, masks_to_flows(s.labels)


def _mean_cosine(a, b, inside):
    return float((a * b).sum(axis=0)[inside].mean())


def test_shapes_dtypes_and_integer_labels(sample):
    image, labels, flows = sample
    out = random_transform(image, labels, flows=flows, rng=np.random.default_rng(0),
                           out_size=(64, 80))
    assert out.image.shape == (2, 64, 80) and out.image.dtype == np.float32
    assert out.labels.shape == (64, 80) and out.labels.dtype == np.int32
    assert out.flows.shape == (2, 64, 80) and out.flows.dtype == np.float32
    assert set(np.unique(out.labels)) <= set(np.unique(labels))  # nearest: no new ids
    assert 0.75 - 1e-9 <= out.scale <= 1.25 + 1e-9


def test_flows_unit_on_objects_zero_elsewhere(sample):
    image, labels, flows = sample
    rng = np.random.default_rng(1)
    for _ in range(3):
        out = random_transform(image, labels, flows=flows, rng=rng, out_size=(96, 96))
        norm = np.hypot(*out.flows)
        inside = out.labels > 0
        assert np.all(norm[~inside] == 0)
        assert np.allclose(norm[inside & (norm > 0)], 1, atol=1e-5)
        assert (norm[inside] == 0).mean() < 0.01  # only where interpolation cancels


@pytest.mark.parametrize("angle, flip, scale", [(30, False, 1.0), (90, False, 1.0),
                                                (200, True, 1.3), (30, True, 0.8)])
def test_turned_cached_flows_agree_with_recomputed(sample, angle, flip, scale):
    image, labels, flows = sample
    m = similarity_matrix(labels.shape, out_size=(200, 200), angle=np.deg2rad(angle),
                          scale=scale, flip=flip)
    cached = warp_sample(image, labels, m, flows=flows, out_size=(200, 200))
    fresh = warp_sample(image, labels, m, out_size=(200, 200), recompute_flows=True)
    assert np.array_equal(cached.labels, fresh.labels)
    # objects cut by the crop edge legitimately differ: their cached flows still
    # point at the centre of the whole object, as in Cellpose
    inside = clear_border(fresh.labels) > 0
    assert inside.sum() > 1000
    assert _mean_cosine(cached.flows, fresh.flows, inside) > 0.95
    # the check has teeth: moving the arrows without turning them fails it
    moved = warp_sample(flows, labels, m, out_size=(200, 200)).image
    assert _mean_cosine(moved, fresh.flows, inside) < 0.9


def test_pure_flip_is_an_exact_mirror(sample):
    image, labels, flows = sample
    m = similarity_matrix(labels.shape, out_size=labels.shape, flip=True)
    out = warp_sample(image, labels, m, flows=flows, out_size=labels.shape)
    assert np.array_equal(out.labels, labels[:, ::-1])
    np.testing.assert_allclose(out.image, image[:, :, ::-1], atol=1e-5)
    expected = flows[:, :, ::-1] * np.array([1, -1], np.float32)[:, None, None]
    np.testing.assert_allclose(out.flows, expected, atol=1e-4)


def test_rotation_direction_matches_the_matrix():
    lab = np.zeros((21, 21), np.int32)
    lab[10, 12:20] = 1  # a bar to the right of the centre
    m = similarity_matrix(lab.shape, out_size=lab.shape, angle=np.pi / 2)
    out = warp_sample(lab[None].astype(np.float32), lab, m, out_size=lab.shape)
    rows, cols = np.nonzero(out.labels)
    assert np.all(cols == 10) and np.all(rows < 10)  # +90 degrees: right -> up


def test_recompute_mode_equals_masks_to_flows(sample):
    image, labels, _ = sample
    out = random_transform(image, labels, rng=np.random.default_rng(2), out_size=(64, 64),
                           recompute_flows=True)
    np.testing.assert_array_equal(out.flows, masks_to_flows(out.labels))
    assert random_transform(image, labels, rng=np.random.default_rng(2),
                            out_size=(64, 64)).flows is None


def test_deterministic_given_rng_and_inputs_untouched(sample):
    image, labels, flows = sample
    copies = [a.copy() for a in sample]
    def draw(seed):
        return random_transform(image, labels, flows=flows, rng=np.random.default_rng(seed),
                                out_size=(64, 64))

    a, b, c = draw(7), draw(7), draw(8)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.image, c.image)
    for original, now in zip(copies, sample):
        np.testing.assert_array_equal(original, now)


def test_rescale_zooms_objects():
    s = make_synthetic((96, 96), n_cells=8, diameter=12, kind="nuclei", seed=0)
    out = random_transform(s.image, s.labels, rng=np.random.default_rng(0), out_size=(192, 192),
                           scale_range=0.0, rescale=2.0, rotate=False, do_flip=False)
    assert out.scale == pytest.approx(2.0)
    assert median_diameter(out.labels) == pytest.approx(2 * median_diameter(s.labels), rel=0.05)
    assert out.image.shape == (1, 192, 192)


def test_small_input_is_centred_and_padded_with_zeros():
    lab = np.ones((16, 16), np.int32)
    out = random_transform(lab[None].astype(np.float32), lab, rng=np.random.default_rng(0),
                           out_size=(64, 64), scale_range=0.0, rotate=False)
    rows, cols = np.nonzero(out.labels)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (24, 39, 24, 39)
    assert out.image[0, 0, 0] == 0


def test_bad_arguments():
    lab = np.zeros((8, 8), np.int32)
    with pytest.raises(TypeError, match="Generator"):
        random_transform(lab[None] * 1.0, lab, rng=0)
    with pytest.raises(ValueError, match="differ"):
        random_transform(np.zeros((1, 8, 9)), lab, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="flows must have shape"):
        warp_sample(lab[None] * 1.0, lab, np.eye(3), flows=np.zeros((2, 4, 4)), out_size=(8, 8))
    with pytest.raises(ValueError, match="scale"):
        similarity_matrix((8, 8), scale=0)


def test_numpy_layer_has_no_torch_import():
    import sys

    assert "torch" not in augment.__dict__
    assert all(not name.startswith("torch") for name in vars(augment) if name in sys.modules)
