import numpy as np
import pytest

from cellpose_nb.normalize import move_channels_last, normalize_percentile, to_network_input


def test_percentiles_map_to_0_and_1():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 100.0, size=(64, 80))
    y = normalize_percentile(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    lo, hi = np.percentile(y, [1, 99])
    assert abs(lo) < 1e-5 and abs(hi - 1) < 1e-5


def test_per_channel_and_channel_axis():
    rng = np.random.default_rng(1)
    x = np.stack([rng.random((20, 30)) * 10, rng.random((20, 30)) * 1000 + 5], axis=0)
    y = normalize_percentile(x, channel_axis=0)
    assert y.shape == x.shape
    for c in range(2):
        np.testing.assert_allclose(np.percentile(y[c], [1, 99]), [0, 1], atol=1e-5)


def test_constant_channel_gives_zeros_without_warnings():
    x = np.stack([np.full((8, 8), 3.0), np.arange(64.0).reshape(8, 8)], -1)
    y = normalize_percentile(x)
    assert np.all(y[..., 0] == 0) and np.isfinite(y).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_raise(bad):
    x = np.ones((5, 5))
    x[2, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        normalize_percentile(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        to_network_input(x)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        normalize_percentile(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="low < high"):
        normalize_percentile(np.ones((3, 3)), low=50, high=10)
    with pytest.raises(TypeError, match="numeric"):
        normalize_percentile(np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="shape"):
        move_channels_last(np.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="out of range"):
        to_network_input(np.ones((4, 4, 2)), channels=(3, None))


def test_network_input_channels():
    rng = np.random.default_rng(2)
    img = rng.random((16, 12, 3)).astype(np.float32)
    x = to_network_input(img, channels=(1, 2))
    assert x.shape == (2, 16, 12) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], normalize_percentile(img[..., 1]), atol=1e-6)
    np.testing.assert_allclose(x[1], normalize_percentile(img[..., 2]), atol=1e-6)
    # grayscale: nuclei channel is zeros whatever index was asked
    g = to_network_input(img[..., 0], channels=(0, 1))
    assert np.all(g[1] == 0)
    # RGB luminance and inversion
    inv = to_network_input(img, channels=("gray", None), invert=True)
    gray = to_network_input(img, channels=("gray", None))
    np.testing.assert_allclose(inv[0], 1 - gray[0], atol=1e-6)
    # channels first
    cf = to_network_input(np.moveaxis(img, -1, 0), channels=(1, 2), channel_axis=0)
    np.testing.assert_allclose(cf, x)


def test_input_not_mutated():
    x = np.arange(100, dtype=np.float64).reshape(10, 10)
    before = x.copy()
    normalize_percentile(x)
    to_network_input(x)
    np.testing.assert_array_equal(x, before)


def test_invert_auto_follows_the_background():
    from cellpose_nb.normalize import dark_objects

    rng = np.random.default_rng(0)
    fluo = rng.normal(0.1, 0.02, (96, 96))
    for r, c in [(20, 20), (60, 30), (40, 70)]:
        fluo[r - 6:r + 6, c - 6:c + 6] += 0.8  # bright nuclei on a dark background
    assert not dark_objects(fluo) and dark_objects(1 - fluo)
    auto = to_network_input(fluo, invert="auto")
    np.testing.assert_array_equal(auto, to_network_input(fluo, invert=False))
    auto = to_network_input(1 - fluo, invert="auto")
    np.testing.assert_allclose(auto, to_network_input(1 - fluo, invert=True))
    assert not dark_objects(np.ones((8, 8)))  # flat: nothing to invert
    with pytest.raises(ValueError, match="invert must be"):
        to_network_input(fluo, invert="yes")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        dark_objects(np.zeros((2, 8, 8)))
    # 'gray' on a grayscale image is the image itself
    np.testing.assert_array_equal(to_network_input(fluo, channels=("gray", None)),
                                  to_network_input(fluo))


def _sparse_field(seed=0, n_spots=2, size=256):
    """Dim noisy background with ``n_spots`` bright discs of radius 3.5 px (< 0.5 % of the field)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(12.0, 1.5, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for k in range(n_spots):
        cy, cx = 60 + 120 * k, 80 + 90 * k
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12] = 190.0
    return img, (yy - 60) ** 2 + (xx - 80) ** 2 <= 12


def test_sparse_channel_is_normalised_to_its_999th_percentile():
    from cellpose_nb.normalize import upper_percentile

    img, spot = _sparse_field()
    assert upper_percentile(img) == 99.9
    plain = to_network_input(img, sparse_aware=False)[0]
    aware = to_network_input(img)[0]
    np.testing.assert_array_equal(plain, normalize_percentile(img))
    # fixed 1-99 percentiles put the objects far above anything seen in training
    assert plain[spot].mean() > 20
    np.testing.assert_allclose(aware, normalize_percentile(img, high=99.9))
    assert 0.5 < aware[spot].mean() < 1.5


def test_dense_channels_keep_the_99th_percentile():
    from cellpose_nb.normalize import upper_percentile

    rng = np.random.default_rng(3)
    for img in (rng.gamma(2.0, 100.0, (64, 80)), rng.random((50, 50)),
                np.pad(np.full((40, 40), 200.0), 30) + rng.normal(10, 1, (100, 100))):
        assert upper_percentile(img) == 99.0
        np.testing.assert_array_equal(to_network_input(img)[0], to_network_input(img, sparse_aware=False)[0])


def test_objects_on_an_exactly_flat_background_are_not_zeroed():
    img = np.zeros((100, 100))
    img[:5, :5] = 1.0  # 0.25 % of the field; the 1st and 99th percentiles are both 0
    assert np.all(to_network_input(img, sparse_aware=False)[0] == 0)
    aware = to_network_input(img)[0]
    assert aware[:5, :5].min() == 1.0 and aware[10:, 10:].max() == 0.0
