import numpy as np
import pytest
from scipy import ndimage as ndi

from cellpose_nb import data
from cellpose_nb.data import SyntheticVolume, make_synthetic_volume
from cellpose_nb.data.synthetic import BACKGROUND_LEVEL


@pytest.fixture(scope="module")
def vol():
    return make_synthetic_volume((24, 64, 64), n_cells=12, diameter=20, anisotropy=2.0, seed=0)


def test_types_and_shapes(vol):
    assert isinstance(vol, SyntheticVolume) and "make_synthetic_volume" in data.__all__
    assert vol.image.shape == (24, 64, 64, 2) and vol.image.dtype == np.float32
    assert vol.labels.shape == vol.nuclei.shape == (24, 64, 64)
    assert vol.labels.dtype == vol.nuclei.dtype == np.int32
    assert (vol.diameter, vol.anisotropy) == (20.0, 2.0)


def test_labels_are_sequential_connected_cells(vol):
    ids = np.unique(vol.labels)
    assert ids.tolist() == list(range(vol.labels.max() + 1)) and vol.labels.max() >= 8
    for i, sl in enumerate(ndi.find_objects(vol.labels), start=1):
        assert ndi.label(vol.labels[sl] == i)[1] == 1


def test_cells_touch(vol):
    lab = vol.labels
    faces = [(lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1]), (lab[:, :, 1:], lab[:, :, :-1])]
    pairs = {(int(a), int(b)) for u, v in faces for a, b in zip(u[(u > 0) & (v > 0) & (u != v)],
                                                                 v[(u > 0) & (v > 0) & (u != v)])}
    assert len(pairs) >= 4


def test_every_cell_has_its_nucleus_inside(vol):
    inside = vol.nuclei > 0
    assert (vol.labels[inside] == vol.nuclei[inside]).all()
    assert np.unique(vol.nuclei).tolist() == np.unique(vol.labels).tolist()
    frac = inside.sum() / (vol.labels > 0).sum()
    assert 0.03 < frac < 0.3  # a nucleus of 0.4-0.5 of the cell's size, clipped


def test_z_is_sampled_anisotropy_times_coarser():
    extents = {}
    for a in (1.0, 3.0):
        lab = make_synthetic_volume((40, 80, 80), n_cells=10, diameter=24, anisotropy=a, noise=0, seed=4).labels
        sl = [s for s in ndi.find_objects(lab)]
        extents[a] = np.median([(s[0].stop - s[0].start) / (s[1].stop - s[1].start) for s in sl])
    assert extents[1.0] == pytest.approx(1.0, rel=0.25)
    assert extents[3.0] == pytest.approx(1 / 3, rel=0.3)


def test_image_shows_cells_and_nuclei(vol):
    cyto, nuc = vol.image[..., 0], vol.image[..., 1]
    cells, bg = vol.labels > 0, vol.labels == 0
    assert cyto[cells].mean() > 2 * cyto[bg].mean()
    assert nuc[vol.nuclei > 0].mean() > 2 * nuc[cells & (vol.nuclei == 0)].mean()


def test_seeded_and_knobs():
    a = make_synthetic_volume((8, 32, 32), n_cells=3, diameter=12, seed=7)
    b = make_synthetic_volume((8, 32, 32), n_cells=3, diameter=12, seed=7)
    c = make_synthetic_volume((8, 32, 32), n_cells=3, diameter=12, seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.labels, c.labels)
    clean = make_synthetic_volume((8, 32, 32), n_cells=0, diameter=12, noise=0, blur=0, seed=7)
    assert not clean.labels.any()
    assert clean.image[..., 1].mean() == pytest.approx(BACKGROUND_LEVEL["nuclei"], rel=0.5)
    noisy = make_synthetic_volume((8, 32, 32), n_cells=0, diameter=12, noise=0.2, seed=7)
    assert noisy.image.std() > clean.image.std()


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (32, 32)}, r"\(Z, Y, X\)"),
    ({"shape": (4, 0, 8)}, "positive"),
    ({"n_cells": -1}, "n_cells"),
    ({"diameter": 0}, "diameter"),
    ({"anisotropy": np.nan}, "anisotropy"),
    ({"noise": -1}, "noise"),
    ({"blur": -1}, "blur"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = {"shape": (8, 16, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        make_synthetic_volume(**args)
