"""Tests of cellpose_nb.export3d: the ImageJ hyperstack reads back with its axes and voxel
size, the cell table agrees with a plain NumPy count, the 3D _seg.npy matches the one
cellpose.io writes, bad input is named, and export_all writes volumes all or nothing."""

import csv
import warnings

import numpy as np
import pytest
import tifffile

from cellpose_nb import export as E
from cellpose_nb import export3d as E3
from cellpose_nb.data.synthetic3d import make_synthetic_volume
from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.flows3d import masks_to_flows_3d
from cellpose_nb.labels import LabelDtypeError

VOXEL = (2.0, 0.25, 0.5)  # (dz, dy, dx): every axis different, so a swap shows


@pytest.fixture(scope="module")
def volume():
    return make_synthetic_volume((10, 40, 44), n_cells=5, diameter=14, seed=0)


@pytest.fixture
def labels(volume):
    lab = volume.labels.copy()
    lab[lab == 2] = 9  # non-sequential ids
    lab[0, :3, :4] = 7  # a cell touching the volume's corner
    return lab


def _read_tif(path):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        res = [page.tags[t].value for t in ("XResolution", "YResolution")]
        return (tif.series[0].axes, tif.asarray(), tif.is_imagej, tif.imagej_metadata,
                [num / den for num, den in res])


# --- masks ------------------------------------------------------------------------------
def test_masks_tif_3d_reads_back_with_axes_and_voxel_size(tmp_path, labels):
    p = E3.write_masks_tif_3d(tmp_path / "m.tif", labels, voxel_size=VOXEL)
    axes, data, is_imagej, meta, (xres, yres) = _read_tif(p)
    assert is_imagej and axes == "ZYX" and data.shape == labels.shape
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, labels)
    assert meta["spacing"] == pytest.approx(VOXEL[0]) and meta["unit"] == "um"
    assert xres == pytest.approx(1 / VOXEL[2]) and yres == pytest.approx(1 / VOXEL[1])
    bare = _read_tif(E3.write_masks_tif_3d(tmp_path / "bare.tif", labels))
    assert bare[0] == "ZYX" and "spacing" not in bare[3]


def test_masks_tif_3d_many_labels_are_exact_float32(tmp_path, labels):
    big = np.where(labels > 0, labels + 70_000, 0)
    axes, data, *_ = _read_tif(E3.write_masks_tif_3d(tmp_path / "m.tif", big))
    assert data.dtype == np.float32  # ImageJ reads no uint32
    np.testing.assert_array_equal(data.astype(np.int64), big)
    with pytest.raises(ValueError, match=str(2 ** 24 + 1)):
        E3.write_masks_tif_3d(tmp_path / "huge.tif", np.where(labels > 0, 2 ** 24 + 1, 0))
    assert not (tmp_path / "huge.tif").exists()


# --- cell table -------------------------------------------------------------------------
def _plain_table(labels, image, voxel):
    """The same table by a plain loop over np.nonzero (the readable version)."""
    rows = []
    for k in np.unique(labels[labels > 0]):
        zyx = np.nonzero(labels == k)
        row = {"label": int(k), "volume": len(zyx[0])}
        row.update(zip(("centroid_z", "centroid_row", "centroid_col"), (c.mean() for c in zyx)))
        row.update(zip(("bbox_z0", "bbox_row0", "bbox_col0"), (c.min() for c in zyx)))
        row.update(zip(("bbox_z1", "bbox_row1", "bbox_col1"), (c.max() + 1 for c in zyx)))
        row["volume_um3"] = row["volume"] * np.prod(voxel)
        row["equivalent_diameter_um"] = (6 * row["volume_um3"] / np.pi) ** (1 / 3)
        for c in range(image.shape[-1]):
            row[f"mean_intensity_ch{c}"] = image[..., c][labels == k].mean()
        rows.append(row)
    return rows


def test_cell_table_3d_agrees_with_a_plain_count(labels, volume):
    ours = E3.cell_table_3d(labels, volume.image, voxel_size=VOXEL)
    plain = _plain_table(labels, volume.image, VOXEL)
    ids = sorted(set(labels.flat) - {0})
    assert [r["label"] for r in ours] == [r["label"] for r in plain] == ids
    for a, b in zip(ours, plain):
        assert list(a) == list(b)
        assert a == pytest.approx(b)
    # channels first, given by channel_axis, give the same means
    first = E3.cell_table_3d(labels, np.moveaxis(volume.image, -1, 0), channel_axis=0)
    assert [r["mean_intensity_ch1"] for r in first] == pytest.approx(
        [r["mean_intensity_ch1"] for r in plain])
    assert "volume_um3" not in first[0]
    assert E3.cell_table_3d(np.zeros((2, 3, 3), int)) == []


def test_cells_csv_3d_round_trip(tmp_path, labels, volume):
    p = E3.write_cells_csv_3d(tmp_path / "c.csv", labels, volume.image[..., 0], voxel_size=VOXEL)
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = E3.cell_table_3d(labels, volume.image[..., 0], voxel_size=VOXEL)
    assert list(rows[0]) == list(table[0]) and len(rows) == len(table)
    assert [float(r["volume_um3"]) for r in rows] == pytest.approx(
        [r["volume_um3"] for r in table])
    empty = E3.write_cells_csv_3d(tmp_path / "e.csv", np.zeros((2, 3, 3), int))
    assert empty.read_text().splitlines() == [",".join(E3.CSV_COLUMNS_3D)]


# --- Cellpose GUI -----------------------------------------------------------------------
def _our_seg(tmp_path, labels, name="img_seg.npy"):
    flows = masks_to_flows_3d(labels)
    cellprob = np.where(labels > 0, 3.0, -3.0).astype(np.float32)
    p = E3.write_seg_npy_3d(tmp_path / name, None, labels, flows, cellprob=cellprob,
                            diameter=14.0)
    return np.load(p, allow_pickle=True).item(), flows, cellprob


def test_seg_npy_3d_has_what_the_gui_reads(tmp_path, labels):
    dat, flows, _ = _our_seg(tmp_path, labels)
    Z, Y, X = labels.shape
    np.testing.assert_array_equal(dat["masks"], labels)
    assert dat["masks"].dtype == np.uint16 and dat["diameter"] == 14.0
    assert dat["filename"] == str(tmp_path / "img")
    # what cellpose.gui.io._load_seg and _masks_to_gui read for a stack
    assert dat["outlines"].shape == (Z, Y, X) and dat["masks"].min() >= 0
    assert len(dat["ismanual"]) == dat["masks"].max()
    assert dat["flows"][0].shape == (Z, Y, X, 3) and dat["flows"][0].shape[-3] == Y
    assert dat["flows"][1].shape == dat["flows"][2].shape == (Z, Y, X)
    assert dat["flows"][4].shape == (4, Z, Y, X)
    np.testing.assert_allclose(dat["flows"][4][:3], FLOW_SCALE * flows)
    # outlines are drawn per slice (a cell's top slice only at its rim), with the cell's id,
    # and along the volume's sides where a cell is cut by them
    from skimage.segmentation import find_boundaries
    out = dat["outlines"]
    assert np.array_equal(out[out > 0], labels[out > 0])
    for z in (0, Z // 2):
        inner = find_boundaries(labels[z], mode="inner")[1:-1, 1:-1]
        np.testing.assert_array_equal(out[z, 1:-1, 1:-1] > 0, inner)
    assert (out[0, 0, :4] == 7).all() and (out[0, :3, 0] == 7).all() and out[0, 1, 1] == 0
    with pytest.raises(FileExistsError, match="img_seg.npy"):
        _our_seg(tmp_path, labels)
    bare = E3.write_seg_npy_3d(tmp_path / "bare_seg.npy", None, labels)
    assert np.load(bare, allow_pickle=True).item()["flows"] == [[], [], [], [], [[]]]


def test_seg_npy_3d_from_stitched_flows_has_an_empty_dz_view(tmp_path, labels):
    flows2 = masks_to_flows_3d(labels)[1:]
    p = E3.write_seg_npy_3d(tmp_path / "s_seg.npy", None, labels, flows2)
    dat = np.load(p, allow_pickle=True).item()
    assert not dat["flows"][2].any() and dat["flows"][4].shape == (3, *labels.shape)


def test_seg_npy_3d_matches_cellpose(tmp_path, labels, cellpose_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cellpose import io as cp_io
        from cellpose import plot as cp_plot
    ours, flows, cellprob = _our_seg(tmp_path, labels)
    dp = FLOW_SCALE * flows
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    cp_io.masks_flows_to_seg(labels * 1.0, labels, [cp_plot.dx_to_circ(dp), dp, cellprob],
                             str(ref_dir / "img.tif"), diams=14.0, channels=[0, 0])
    ref = np.load(ref_dir / "img_seg.npy", allow_pickle=True).item()
    assert sorted(ours) == sorted(ref)
    for key in ("masks", "ismanual"):
        assert ours[key].dtype == ref[key].dtype
        np.testing.assert_array_equal(ours[key], ref[key])
    assert ours["outlines"].dtype == ref["outlines"].dtype
    # skimage's inner boundary of the padded slice is cv2's external contour, pixel for pixel
    np.testing.assert_array_equal(ours["outlines"], ref["outlines"])
    assert len(ours["flows"]) == len(ref["flows"])
    for a, b in zip(ours["flows"], ref["flows"]):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype
    assert np.abs(ours["flows"][0].astype(int) - ref["flows"][0]).max() <= 1
    np.testing.assert_array_equal(ours["flows"][1], ref["flows"][1])
    np.testing.assert_array_equal(ours["flows"][2], ref["flows"][2])
    np.testing.assert_allclose(ours["flows"][4], ref["flows"][4])
    assert ours["chan_choose"] == ref["chan_choose"] and ours["diameter"] == ref["diameter"]


def test_flow_circ_is_cellposes_dx_to_circ(labels, cellpose_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cellpose import plot as cp_plot
    dp = FLOW_SCALE * masks_to_flows_3d(labels)
    for d in (dp, dp[1:, 3]):  # a volume, and one slice's 2D flows
        ours, ref = E3.flow_circ(d), cp_plot.dx_to_circ(d)
        assert ours.shape == ref.shape and np.abs(ours.astype(int) - ref).max() <= 1


# --- bad input --------------------------------------------------------------------------
WRITERS = {
    "masks": lambda p, lab, **kw: E3.write_masks_tif_3d(p, lab, **kw),
    "csv": lambda p, lab, **kw: E3.write_cells_csv_3d(p, lab, **kw),
    "seg": lambda p, lab, **kw: E3.write_seg_npy_3d(p, None, lab, **kw),
}
BAD_LABELS = [
    (np.zeros((5, 5), np.int32), ValueError, r"3-D \(Z, Y, X\); got shape \(5, 5\)"),
    (np.zeros((2, 5, 5)), LabelDtypeError, "integer array.*float64"),
    (np.full((2, 5, 5), np.nan), LabelDtypeError, "float64"),
    (np.full((2, 5, 5), -1), ValueError, "minimum -1"),
]


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("bad, exc, match", BAD_LABELS)
def test_bad_labels_are_named_and_nothing_is_written(tmp_path, fmt, bad, exc, match):
    with pytest.raises(exc, match=match):
        WRITERS[fmt](tmp_path / "out", bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["masks", "csv"])
@pytest.mark.parametrize("voxel", [(0, 1, 1), (1, -1, 1), (np.nan, 1, 1), (1, np.inf, 1),
                                   (1, 1), "abc", 2.0])
def test_bad_voxel_size_is_named(tmp_path, labels, fmt, voxel):
    with pytest.raises(ValueError, match="voxel_size must be three finite positive") as err:
        WRITERS[fmt](tmp_path / "out", labels, voxel_size=voxel)
    assert repr(voxel) in str(err.value) and list(tmp_path.iterdir()) == []


def test_image_flows_and_cellprob_that_do_not_match_are_named(tmp_path, labels, volume):
    with pytest.raises(ValueError, match=r"image of shape \(10, 40\).*labels of shape \(10, 40, 4"):
        E3.cell_table_3d(labels, volume.image[..., 0, 0])
    with pytest.raises(ValueError, match=r"image of shape \(10, 40, 43\)"):
        E3.write_cells_csv_3d(tmp_path / "c.csv", labels, volume.image[:, :, :43, 0])
    nan = volume.image.copy()
    nan[0, 0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        E3.cell_table_3d(labels, nan)
    with pytest.raises(ValueError, match="channel_axis=4 is out of range"):
        E3.cell_table_3d(labels, volume.image, channel_axis=4)
    with pytest.raises(TypeError, match="dtype bool"):
        E3.cell_table_3d(labels, labels > 0)
    with pytest.raises(ValueError, match=r"flows must have shape \(3, 10, 40, 44\)"):
        E3.write_seg_npy_3d(tmp_path / "a_seg.npy", None, labels, np.zeros((3, 10, 40, 4)))
    with pytest.raises(ValueError, match=r"cellprob shape \(10, 40\)"):
        E3.write_seg_npy_3d(tmp_path / "a_seg.npy", None, labels, masks_to_flows_3d(labels),
                            cellprob=np.zeros((10, 40)))
    with pytest.raises(ValueError, match="finite"):
        E3.write_seg_npy_3d(tmp_path / "a_seg.npy", None, labels,
                            np.full((3, *labels.shape), np.nan))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", WRITERS)
def test_an_existing_file_is_kept_unless_overwrite(tmp_path, labels, fmt):
    target = tmp_path / "keep_me.out"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="keep_me.out"):
        WRITERS[fmt](target, labels)
    assert target.read_bytes() == b"mine"
    WRITERS[fmt](target, labels, overwrite=True)
    assert target.read_bytes() != b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep_me.out"]  # no temporaries left


# --- export_all -------------------------------------------------------------------------
class _Result:  # duck-typed stand-in for a 3D predict.Segmentation (no torch here)
    def __init__(self, labels):
        self.labels = labels
        self.flows = masks_to_flows_3d(labels)
        self.cellprob = np.where(labels > 0, 4.0, -4.0).astype(np.float32)
        self.diameter = 14.0


def test_export_all_writes_a_volume_with_the_3d_writers(tmp_path, labels, volume):
    paths = E.export_all(tmp_path / "out", "vol", volume.image, _Result(labels),
                         channel_axis=-1, voxel_size=VOXEL)
    assert [p.name for p in paths] == ["vol_masks.tif", "vol_cells.csv", "vol_seg.npy"]
    axes, data, _, meta, _ = _read_tif(paths[0])
    assert axes == "ZYX" and meta["spacing"] == pytest.approx(VOXEL[0])
    np.testing.assert_array_equal(data, labels)
    header = paths[1].read_text().splitlines()[0].split(",")
    assert "volume_um3" in header and "mean_intensity_ch1" in header
    dat = np.load(paths[2], allow_pickle=True).item()
    assert dat["flows"][4].shape == (4, *labels.shape) and dat["diameter"] == 14.0


def test_export_all_3d_refuses_before_writing(tmp_path, labels, volume):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"unknown formats \['outlines'\] for 3-D labels"):
        E.export_all(out, "vol", None, labels, formats=("masks", "outlines"))
    with pytest.raises(ValueError, match="voxel_size"):
        E.export_all(out, "vol", None, labels, voxel_size=(1, 0, 1))
    with pytest.raises(ValueError, match="for 3D labels"):
        E.export_all(out, "img", None, labels[0], voxel_size=VOXEL)
    with pytest.raises(ValueError, match="does not match"):
        E.export_all(out, "vol", volume.image[:, :-1], labels, channel_axis=-1)
    assert not out.exists()
    out.mkdir()
    (out / "vol_seg.npy").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="vol_seg.npy"):
        E.export_all(out, "vol", None, labels)
    assert sorted(p.name for p in out.iterdir()) == ["vol_seg.npy"]
    assert (out / "vol_seg.npy").read_bytes() == b"keep me"


class _FakeGUI:
    """Just enough of cellpose's GUI window for ``cellpose.gui.io._load_seg``: data
    attributes are real, widgets and redraws are no-ops."""

    def __init__(self):
        self.load_3D, self.restore, self.loaded = True, None, False
        self.colormap = np.random.default_rng(0).integers(0, 255, (1000, 3), dtype=np.uint8)

    def __getattr__(self, name):  # any widget, method or redraw: a no-op that chains
        if name in ("stack_filtered", "cellpix_orig"):  # what the GUI probes with hasattr
            raise AttributeError(name)
        return _NoOp()


class _NoOp:
    def __call__(self, *a, **k):
        return self

    def __getattr__(self, name):
        return self

    def __getitem__(self, key):
        return self


def test_cellposes_own_gui_loader_reads_the_3d_seg(tmp_path, labels, volume):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gui_io = pytest.importorskip("cellpose.gui.io")
    from skimage.segmentation import relabel_sequential
    labels = relabel_sequential(labels)[0]  # ids 1..N: the GUI keeps the file's outlines
    dat, flows, _ = _our_seg(tmp_path, labels)
    gui = _FakeGUI()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gui_io._load_seg(gui, filename=str(tmp_path / "img_seg.npy"), image=volume.image[..., 0],
                         image_file=str(tmp_path / "img.tif"), load_3D=True)
    assert gui.loaded and gui.NZ == labels.shape[0]
    np.testing.assert_array_equal(gui.cellpix, labels)
    np.testing.assert_array_equal(gui.outpix, dat["outlines"])
    assert gui.ncells == labels.max() and len(gui.ismanual) == gui.ncells
    # the flows were taken as they are (a shape the GUI dislikes would be replaced by [])
    assert gui.flows[0].shape == (*labels.shape, 3) and gui.recompute_masks is False
    np.testing.assert_array_equal(gui.flows[2], dat["flows"][2])
