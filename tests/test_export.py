"""Tests of cellpose_nb.export: every writer round-trips, refuses to overwrite, writes
atomically; the _seg.npy matches cellpose's own; export_all checks all paths first."""

import csv
import warnings

import numpy as np
import pytest
import roifile
import skimage.io
import tifffile

from cellpose_nb import export as E
from cellpose_nb.flows import FLOW_SCALE, masks_to_flows


def _disc(shape, centre, radius):
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2


@pytest.fixture
def labels():
    lab = np.zeros((60, 80), np.int32)
    lab[_disc(lab.shape, (20, 20), 10)] = 1
    lab[_disc(lab.shape, (40, 55), 7)] = 5  # non-sequential ids
    lab[50:60, 0:6] = 2  # touches the border
    return lab


def _shoelace(xy):
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


# --- masks ------------------------------------------------------------------------------
def test_masks_tif_round_trip_dtype_and_refusal(tmp_path, labels):
    p = E.write_masks_tif(tmp_path / "a_masks.tif", labels)
    back = tifffile.imread(p)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    big = labels.astype(np.int64) * 20_000  # max 100000 -> uint32
    p2 = E.write_masks_tif(tmp_path / "b_masks.tif", big)
    assert tifffile.imread(p2).dtype == np.uint32
    np.testing.assert_array_equal(tifffile.imread(p2), big)
    with pytest.raises(FileExistsError, match="a_masks.tif"):
        E.write_masks_tif(p, labels * 0)
    np.testing.assert_array_equal(tifffile.imread(p), labels)  # untouched
    E.write_masks_tif(p, labels * 0, overwrite=True)
    assert tifffile.imread(p).max() == 0
    with pytest.raises(TypeError):
        E.write_masks_tif(tmp_path / "c.tif", labels > 0)


def test_interrupted_write_leaves_no_partial_file(tmp_path, labels, monkeypatch):
    def broken(path, data, **kw):
        with open(path, "wb") as fh:
            fh.write(b"half a tiff")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(KeyboardInterrupt):
        E.write_masks_tif(tmp_path / "a_masks.tif", labels)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old_masks.tif").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        E.write_masks_tif(tmp_path / "old_masks.tif", labels, overwrite=True)
    assert (tmp_path / "old_masks.tif").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


# --- outlines ---------------------------------------------------------------------------
def test_outlines_png(tmp_path, labels):
    img = np.where(labels > 0, 100.0, 10.0)
    rgb = skimage.io.imread(E.write_outlines_png(tmp_path / "o.png", img, labels))
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8
    assert rgb[10, 20].tolist() == list(E.OUTLINE_COLOR)  # top of disc 1
    assert rgb[20, 20].tolist() == [255, 255, 255]  # inside: bright gray
    assert rgb[0, 79].tolist() == [0, 0, 0]  # background: dark gray
    two = np.stack([img, 110 - img])  # channels first: red = cells, green = background
    rgb = skimage.io.imread(E.write_outlines_png(tmp_path / "o2.png", two, labels,
                                                 channel_axis=0, color=(0, 0, 255)))
    assert rgb[20, 20].tolist() == [255, 0, 0] and rgb[0, 79].tolist() == [0, 255, 0]
    assert rgb[10, 20].tolist() == [0, 0, 255]
    with pytest.raises(FileExistsError, match="o.png"):
        E.write_outlines_png(tmp_path / "o.png", img, labels)
    with pytest.raises(ValueError, match="does not match"):
        E.write_outlines_png(tmp_path / "o3.png", img[:10], labels)


# --- table ------------------------------------------------------------------------------
def test_cell_table_and_csv(tmp_path, labels):
    image = np.stack([labels * 2.0, np.full(labels.shape, 7.0)], -1)
    rows = E.cell_table(labels, image)
    assert [r["label"] for r in rows] == [1, 2, 5]
    r1 = rows[0]
    assert r1["area"] == int((labels == 1).sum())
    assert (r1["centroid_row"], r1["centroid_col"]) == pytest.approx((20, 20))
    assert r1["equivalent_diameter"] == pytest.approx(20, rel=0.05)
    assert rows[2]["mean_intensity_ch0"] == 10.0 and rows[2]["mean_intensity_ch1"] == 7.0
    assert E.cell_table(np.zeros((5, 5), int)) == []

    p = E.write_cells_csv(tmp_path / "c.csv", labels, image.transpose(2, 0, 1), channel_axis=0)
    with open(p, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == [*E.CSV_COLUMNS, "mean_intensity_ch0", "mean_intensity_ch1"]
    assert [int(r["label"]) for r in back] == [1, 2, 5]
    assert float(back[1]["mean_intensity_ch0"]) == 4.0
    with pytest.raises(FileExistsError, match="c.csv"):
        E.write_cells_csv(p, labels)
    empty = E.write_cells_csv(tmp_path / "e.csv", np.zeros((5, 5), int))
    assert empty.read_text().strip() == ",".join(E.CSV_COLUMNS)


# --- ImageJ ROIs ------------------------------------------------------------------------
def test_imagej_rois_read_back(tmp_path, labels):
    p = E.write_imagej_rois(tmp_path / "r.zip", labels)
    rois = roifile.roiread(p)
    assert [r.name for r in rois] == ["1", "2", "5"]
    assert all(r.roitype == roifile.ROI_TYPE.POLYGON for r in rois)
    for roi, label in zip(rois, (1, 2, 5)):
        xy = roi.coordinates()
        area = (labels == label).sum()
        assert _shoelace(xy) == pytest.approx(area, rel=0.08)
        rr, cc = np.nonzero(labels == label)  # ImageJ pixel centres are at +0.5
        assert xy[:, 0].mean() == pytest.approx(cc.mean() + 0.5, abs=0.5)
        assert xy[:, 1].mean() == pytest.approx(rr.mean() + 0.5, abs=0.5)
    disc = rois[0].coordinates()
    radii = np.hypot(disc[:, 0] - 20.5, disc[:, 1] - 20.5)
    assert radii.min() > 9 and radii.max() < 11
    with pytest.raises(FileExistsError, match="r.zip"):
        E.write_imagej_rois(p, labels)
    assert roifile.roiread(E.write_imagej_rois(tmp_path / "e.zip", np.zeros((5, 5), int))) == []


# --- Cellpose GUI file ------------------------------------------------------------------
def _our_seg(tmp_path, labels, **kw):
    flows = masks_to_flows(labels)
    cellprob = np.where(labels > 0, 3.0, -3.0).astype(np.float32)
    p = E.write_seg_npy(tmp_path / "img_seg.npy", labels * 1.0, labels, flows,
                        cellprob=cellprob, diameter=17.0, **kw)
    return p, flows, cellprob


def test_seg_npy_round_trip_and_gui_reads(tmp_path, labels):
    p, flows, cellprob = _our_seg(tmp_path, labels)
    dat = np.load(p, allow_pickle=True).item()
    np.testing.assert_array_equal(dat["masks"], labels)
    assert dat["masks"].dtype == np.uint16 and dat["diameter"] == 17.0
    assert dat["filename"] == str(tmp_path / "img") and dat["chan_choose"] == [0, 0]
    np.testing.assert_allclose(dat["flows"][4][:2], FLOW_SCALE * flows)
    np.testing.assert_allclose(dat["flows"][4][2], cellprob)
    assert set(np.unique(dat["outlines"])) <= set(np.unique(labels))
    # what cellpose.gui.io._load_seg reads
    assert dat["masks"].min() >= 0 and len(dat["ismanual"]) == dat["masks"].max()
    assert dat["flows"][0].shape[-3] == dat["masks"].shape[-2]
    assert dat["chan_choose"][0] in range(4) and dat["chan_choose"][1] in range(4)
    with pytest.raises(FileExistsError, match="img_seg.npy"):
        _our_seg(tmp_path, labels)
    bare = E.write_seg_npy(tmp_path / "bare_seg.npy", None, labels)
    assert np.load(bare, allow_pickle=True).item()["flows"] == [[], [], [], [], [[]]]


def test_seg_npy_matches_cellpose(tmp_path, labels, cellpose_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cellpose import io as cp_io
        from cellpose import plot as cp_plot
    p, flows, cellprob = _our_seg(tmp_path, labels)
    ours = np.load(p, allow_pickle=True).item()
    dp = FLOW_SCALE * flows
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    cp_io.masks_flows_to_seg(labels * 1.0, labels, [cp_plot.dx_to_circ(dp), dp, cellprob],
                             str(ref_dir / "img.tif"), diams=17.0, channels=[0, 0])
    ref = np.load(ref_dir / "img_seg.npy", allow_pickle=True).item()
    assert sorted(ours) == sorted(ref)
    for key in ("masks", "ismanual"):
        assert ours[key].dtype == ref[key].dtype
        np.testing.assert_array_equal(ours[key], ref[key])
    assert ours["outlines"].dtype == ref["outlines"].dtype
    agree = (ours["outlines"] > 0) == (ref["outlines"] > 0)
    assert agree.mean() > 0.99  # skimage inner boundary vs cv2 contour: near-identical
    assert len(ours["flows"]) == len(ref["flows"])
    for a, b in zip(ours["flows"], ref["flows"]):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype
    assert np.abs(ours["flows"][0].astype(int) - ref["flows"][0]).max() <= 1
    np.testing.assert_array_equal(ours["flows"][1], ref["flows"][1])
    np.testing.assert_allclose(ours["flows"][4], ref["flows"][4])
    assert ours["chan_choose"] == ref["chan_choose"] and ours["diameter"] == ref["diameter"]


# --- everything -------------------------------------------------------------------------
class _Result:  # duck-typed stand-in for predict.Segmentation (no torch in this test)
    def __init__(self, labels):
        self.labels = labels
        self.flows = masks_to_flows(labels)
        self.cellprob = np.where(labels > 0, 4.0, -4.0).astype(np.float32)
        self.diameter = 17.0


def test_export_all_writes_every_format(tmp_path, labels):
    image = np.where(labels > 0, 50.0, 5.0)
    paths = E.export_all(tmp_path / "out", "img", image, _Result(labels))
    assert [p.name for p in paths] == ["img_masks.tif", "img_outlines.png", "img_cells.csv",
                                       "img_rois.zip", "img_seg.npy"]
    assert all(p.is_file() for p in paths)
    np.testing.assert_array_equal(tifffile.imread(paths[0]), labels)
    assert len(roifile.roiread(paths[3])) == 3
    assert np.load(paths[4], allow_pickle=True).item()["diameter"] == 17.0
    only = E.export_all(tmp_path / "o2", "x", None, labels, formats=("masks", "rois"))
    assert [p.name for p in only] == ["x_masks.tif", "x_rois.zip"]


def test_export_all_checks_every_path_before_writing(tmp_path, labels):
    out = tmp_path / "out"
    out.mkdir()
    (out / "img_seg.npy").write_bytes(b"keep me")  # the last target exists
    with pytest.raises(FileExistsError, match="img_seg.npy"):
        E.export_all(out, "img", None, labels)
    assert sorted(p.name for p in out.iterdir()) == ["img_seg.npy"]  # nothing half-written
    assert (out / "img_seg.npy").read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="does not match"):
        E.export_all(tmp_path / "bad", "img", np.zeros((3, 3)), labels)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    with pytest.raises(ValueError, match="unknown formats"):
        E.export_all(out, "img", None, labels, formats=("masks", "jpeg"))
    paths = E.export_all(out, "img", None, labels, overwrite=True)
    assert len(paths) == 5 and (out / "img_seg.npy").read_bytes() != b"keep me"
    assert _leftovers(out) == []
