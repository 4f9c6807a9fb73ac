"""Block grid, stitching and stores of cellpose_nb.distributed, without a cluster or a network.

The stitching oracle: cut exact labels into blocks with halos, give every
block's labels new local ids (as a block's segmentation would), stitch, and
get the original labels back up to renumbering.
"""

from __future__ import annotations

import numpy as np
import pytest

from cellpose_nb.data import make_synthetic
from cellpose_nb.distributed.blocks import (
    block_grid,
    grid_step,
    halo_for,
    match_region,
    neighbour_pairs,
    within,
)
from cellpose_nb.distributed.quality import crossing_labels, merged_labels, split_labels
from cellpose_nb.distributed.stitch import (
    TABLE_COLUMNS,
    block_table,
    global_labels,
    match_labels,
    merge_tables,
)


@pytest.mark.parametrize("shape, size, halo", [((100, 70), 32, 5), ((64, 64), 64, 10), ((50, 90), (17, 40), 0)])
def test_cores_tile_the_image_once_and_ext_regions_hold_them(shape, size, halo):
    grid = block_grid(shape, size, halo)
    hits = np.zeros(shape, int)
    for b in grid:
        hits[b.core] += 1
        for c, e in zip(b.core, b.ext):
            assert e.start <= c.start and c.stop <= e.stop
            assert c.start - e.start <= halo and e.stop - c.stop <= halo
    assert (hits == 1).all()


def test_bad_grid_arguments_are_named():
    with pytest.raises(ValueError, match="block_size"):
        block_grid((10, 10), 0)
    with pytest.raises(ValueError, match="halo"):
        block_grid((10, 10), 4, -1)
    with pytest.raises(TypeError, match="block_size"):
        block_grid((10, 10), 4.5)
    with pytest.raises(ValueError, match="diameter"):
        halo_for(float("nan"))


def test_halo_on_the_network_grid():
    assert halo_for(34, multiple=grid_step(34, 17, 16)) % 32 == 0
    assert grid_step(30, 17, 16) == 1  # 28.2 px per 16 network pixels: no whole step


def test_match_labels_links_overlap_not_touching():
    a = np.zeros((6, 10), int)
    b = np.zeros((6, 10), int)
    a[:, 0:4] = 1   # a's cell 1 ...
    b[:, 0:4] = 7   # ... is b's cell 7
    a[:, 4:7] = 2   # a's cell 2 only touches b's cell 8: never linked
    b[:, 7:10] = 8
    assert match_labels(a, b).tolist() == [[1, 7]]
    # one cell of a over two pieces in b: by IoU alone linked once, to the larger piece ...
    b2 = np.zeros_like(b)
    b2[:, 0:3], b2[:, 3:4] = 5, 6
    assert match_labels(a, b2, min_iou=0.2, min_contained=None).tolist() == [[1, 5]]
    # ... and the partnerless piece joins it by default (the cell is not cut where b split it)
    assert match_labels(a, b2, min_iou=0.2).tolist() == [[1, 5], [1, 6]]
    # two cells of a, each half inside one of b: neither IoU nor containment links them
    a3 = np.zeros_like(a)
    a3[:, 0:4], a3[:, 4:8] = 1, 2
    b3 = np.zeros_like(a)
    b3[:, 2:6] = 9
    assert match_labels(a3, b3, min_contained=0.8).tolist() == []
    with pytest.raises(ValueError, match="one shape"):
        match_labels(a, b[:3])
    with pytest.raises(ValueError, match="min_contained"):
        match_labels(a, b, min_contained=1.5)


def test_a_partnerless_label_joins_the_label_it_lies_in():
    # block a merged two cells (label 1) that block b tells apart (3: large, 4: small); by IoU
    # a's 1 partners b's 3, and b's 4 has no partner: it joins a's 1, so it is not cut at the line
    a = np.zeros((6, 12), int)
    a[:, 0:9] = 1
    b = np.zeros((6, 12), int)
    b[:, 0:6], b[:, 6:9] = 3, 4
    assert match_labels(a, b, min_contained=None).tolist() == [[1, 3]]
    assert match_labels(a, b).tolist() == [[1, 3], [1, 4]]
    # the same when a is the one that split: pieces without a partner join b's whole cell
    assert match_labels(b, a).tolist() == [[3, 1], [4, 1]]
    # a partnerless label less than half inside: left alone
    c = np.zeros((6, 12), int)
    c[:, 0:4] = 5
    d = np.zeros((6, 12), int)
    d[:, 2:12] = 6
    e = np.zeros((6, 12), int)
    e[:, 3:12] = 7  # 1 of 4 columns of c's 5 inside: 0.25
    assert match_labels(c, e).tolist() == []
    assert match_labels(c, d).tolist() == [[5, 6]]  # half inside: joined


def test_global_ids_join_a_corner_cell_and_drop_halo_only_labels():
    # four blocks each see one cell at their common corner; block 3 also has a halo-only label
    links = [(0, 1, np.array([[1, 1]])), (0, 2, np.array([[1, 1]])), (1, 3, np.array([[1, 1]]))]
    areas = [np.array([0, 4]), np.array([0, 4]), np.array([0, 4]), np.array([0, 4, 0])]
    luts, n = global_labels([1, 1, 1, 2], links, areas)
    assert n == 1 and [lut.tolist() for lut in luts] == [[0, 1], [0, 1], [0, 1], [0, 1, 0]]
    assert all(lut.dtype == np.int64 for lut in luts)


def _stitch_exact(labels, size, halo, seed=0):
    """Stitch block-wise crops of exact ``labels``, each renumbered at random: the oracle."""
    rng = np.random.default_rng(seed)
    grid = block_grid(labels.shape, size, halo)
    ext, tables = [], []
    for b in grid:
        local = np.unique(labels[b.ext], return_inverse=True)[1].reshape(b.ext_shape)
        local = local if (labels[b.ext] == 0).any() else local + 1  # 0 stays background
        n = int(local.max())
        perm = np.concatenate([[0], rng.permutation(n) + 1])
        local = perm[local]
        ext.append(local)
        tables.append(block_table(local[b.core_in_ext], tuple(c.start for c in b.core), n))
    margin = tuple(max(1, h // 2) for h in np.broadcast_to(halo, labels.ndim))
    regions = {(a, c): match_region(grid[a], grid[c], margin) for a, c in neighbour_pairs(grid)}
    links = [(a, c, match_labels(ext[a][within(r, grid[a])], ext[c][within(r, grid[c])]))
             for (a, c), r in regions.items()]
    luts, n = global_labels([int(e.max()) for e in ext], links, [t[:, 0] for t in tables])
    out = np.zeros(labels.shape, np.int64)
    for b, e, lut in zip(grid, ext, luts):
        out[b.core] = lut[e[b.core_in_ext]]
    return out, merge_tables(tables, luts, n), n


@pytest.mark.parametrize("size", [64, 100, (70, 45)])
def test_stitching_exact_blocks_gives_the_labels_back(size):
    truth = make_synthetic((300, 260), n_cells=60, diameter=24, touching=0.7, seed=3).labels
    out, cells, n = _stitch_exact(truth, size, halo=48)
    # one-to-one up to renumbering: every true cell is one stitched label and back
    pairs = np.unique(np.stack([truth.ravel(), out.ravel()]), axis=1)
    assert n == truth.max() and pairs.shape[1] == n + 1
    assert sorted(np.unique(out).tolist()) == list(range(n + 1))  # 1..N, no gaps
    # the cell table summed from the cores is that of the whole label image
    from cellpose_nb.export import cell_table

    ref = cell_table(out)
    assert [r["area"] for r in ref] == cells["area"].tolist()
    np.testing.assert_allclose([r["centroid_row"] for r in ref], cells["centroid_row"])
    np.testing.assert_allclose([r["centroid_col"] for r in ref], cells["centroid_col"])
    k = int(np.argmax(cells["area"]))
    rows, cols = np.nonzero(out == k + 1)
    assert (cells["bbox_min_row"][k], cells["bbox_max_col"][k]) == (rows.min(), cols.max() + 1)


def test_stitching_exact_blocks_of_a_volume_gives_the_labels_back():
    from cellpose_nb.data import make_synthetic_volume
    from cellpose_nb.export3d import cell_table_3d

    truth = make_synthetic_volume((30, 70, 64), n_cells=25, diameter=20, seed=1).labels
    # blocks cut every axis (planes too), cores that do not divide it, halos per axis
    out, cells, n = _stitch_exact(truth, (12, 32, 25), halo=(8, 16, 16))
    pairs = np.unique(np.stack([truth.ravel(), out.ravel()]), axis=1)
    assert n == len(np.unique(truth)) - 1 and pairs.shape[1] == n + 1
    # the quality measures: cells cut by a face are split without stitching, whole with it
    crossing = crossing_labels(truth, (12, 32, 25))
    cores = np.zeros_like(truth)
    for k, b in enumerate(block_grid(truth.shape, (12, 32, 25))):
        cores[b.core] = np.where(truth[b.core] > 0, truth[b.core] + 1000 * (k + 1), 0)
    unstitched = split_labels(truth, cores, crossing)
    assert len(crossing) > 10 and len(unstitched) > len(crossing) // 2 and set(unstitched) <= set(crossing)
    assert split_labels(truth, out, crossing) == [] and merged_labels(truth, out) == []
    ref = cell_table_3d(out)
    assert [r["volume"] for r in ref] == cells["volume"].tolist()
    for key in ("centroid_z", "centroid_row", "centroid_col"):
        np.testing.assert_allclose([r[key] for r in ref], cells[key])
    for key in ("bbox_z0", "bbox_row0", "bbox_col0", "bbox_z1", "bbox_row1", "bbox_col1"):
        assert [r[key] for r in ref] == cells[key].tolist(), key


def test_touching_cells_across_a_boundary_stay_two():
    lab = np.zeros((40, 40), int)
    lab[10:30, 5:20] = 1   # ends at column 20, the block line ...
    lab[10:30, 20:35] = 2  # ... where its neighbour starts: touching, not one cell
    out, _, n = _stitch_exact(lab, 20, halo=10)
    assert n == 2 and len(np.unique(out[lab == 1])) == 1 and len(np.unique(out[lab == 2])) == 1


def test_block_table_columns_and_bad_count():
    lab = np.zeros((5, 5), int)
    lab[1:3, 1:4] = 1
    table = block_table(lab, (10, 0), n_labels=3)
    assert table.shape == (4, len(TABLE_COLUMNS)) and table[1, 0] == 6 and table[3].tolist() == [0] * 7
    with pytest.raises(ValueError, match="n_labels"):
        block_table(lab, n_labels=0)


# --- stores (the distributed extra) ------------------------------------------------------
@pytest.fixture()
def zarr():
    return pytest.importorskip("zarr")


def test_open_image_reads_regions_of_every_store(tmp_path, zarr):
    import tifffile

    from cellpose_nb.distributed.io import open_image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (300, 200, 2), dtype=np.uint16)
    region = (slice(30, 130), slice(50, 70))
    want = img[region]
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=img, chunks=(64, 64, 2))
    zarr.create_array(store=str(tmp_path / "cf.zarr"), data=np.moveaxis(img, -1, 0), chunks=(1, 64, 64))
    tifffile.imwrite(tmp_path / "t.tif", np.moveaxis(img, -1, 0), tile=(64, 64), photometric="minisblack")
    tifffile.imwrite(tmp_path / "g.tif", img[..., 0], tile=(64, 64))
    sources = [open_image(tmp_path / "a.zarr"), open_image(tmp_path / "cf.zarr", channel_axis=0),
               open_image(tmp_path / "t.tif"), open_image(img)]
    for src in sources:
        assert src.shape == (300, 200) and src.n_channels == 2
        np.testing.assert_array_equal(src.read(region), want)
    gray = open_image(tmp_path / "g.tif")
    assert gray.n_channels == 0
    np.testing.assert_array_equal(gray.read(region), want[..., 0])


def test_open_image_reads_ome_zarr_axes(tmp_path, zarr):
    from cellpose_nb.distributed.io import open_image
    from cellpose_nb.distributed.writers import _ome_writer

    img = np.random.default_rng(1).integers(0, 255, (2, 1, 120, 90), dtype=np.uint8)  # c, z, y, x
    root = zarr.open_group(str(tmp_path / "i.ome.zarr"), mode="w")
    _ome_writer().write_image(img, root, axes="czyx", scale_factors=())
    src = open_image(tmp_path / "i.ome.zarr")
    assert src.shape == (120, 90) and src.n_channels == 2
    np.testing.assert_array_equal(src.read((slice(10, 20), slice(0, 5))),
                                  np.moveaxis(img[:, 0, 10:20, 0:5], 0, -1))


def test_open_image_bad_input_is_named(tmp_path, zarr):
    from cellpose_nb.distributed.io import open_image

    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        open_image(tmp_path / "nope.zarr")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="bad.tif"):
        open_image(tmp_path / "bad.tif")
    zarr.create_array(store=str(tmp_path / "vol.zarr"), data=np.zeros((5, 40, 40)), chunks=(1, 40, 40))
    with pytest.raises(ValueError, match="channel_axis"):
        open_image(tmp_path / "vol.zarr")
    group = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    group.create_array("raw", shape=(10, 10), dtype="uint8")
    with pytest.raises(ValueError, match="raw"):
        open_image(tmp_path / "grp.zarr")
    with pytest.raises(TypeError, match="numeric"):
        open_image(np.zeros((10, 10), bool))
    with pytest.raises(TypeError, match="list"):
        open_image([[1, 2]])


def test_open_image_reads_volumes(tmp_path, zarr):
    import tifffile

    from cellpose_nb.distributed._worker import sample_task
    from cellpose_nb.distributed.io import open_image
    from cellpose_nb.distributed.writers import _ome_writer

    rng = np.random.default_rng(2)
    vol = rng.integers(0, 4000, (6, 50, 40, 2), dtype=np.uint16)  # z, y, x, c
    region = (slice(1, 4), slice(10, 30), slice(5, 9))
    zarr.create_array(store=str(tmp_path / "v.zarr"), data=vol, chunks=(2, 32, 32, 2))
    tifffile.imwrite(tmp_path / "v.tif", vol[..., 0], imagej=True, metadata={"axes": "ZYX"})
    root = zarr.open_group(str(tmp_path / "v.ome.zarr"), mode="w")
    _ome_writer().write_image(np.moveaxis(vol, -1, 0), root, axes="czyx", scale_factors=())
    zyxc = [open_image(tmp_path / "v.zarr", channel_axis=-1, volume=True),
            open_image(tmp_path / "v.ome.zarr", volume=True),
            open_image(np.moveaxis(vol, 0, 2), z_axis=2, channel_axis=-1, volume=True)]
    for src in zyxc:
        assert src.shape == (6, 50, 40) and src.n_channels == 2 and src.ndim == 3
        np.testing.assert_array_equal(src.read(region), vol[region])
    gray = open_image(tmp_path / "v.tif", volume=True)
    assert gray.shape == (6, 50, 40) and gray.n_channels == 0 and "6 x 50 x 40 voxels" in gray.describe()
    np.testing.assert_array_equal(gray.read(region), vol[region][..., 0])
    # the percentile sample of a volume: every step-th voxel along every axis
    part = sample_task(gray, region, 2)
    np.testing.assert_array_equal(part, vol[1:4, 10:30, 5:9, 0][1::2, ::2, 1::2])
    assert part.base is None  # not a view: held by dask until gathered, it would keep its block


def test_open_image_names_what_is_not_a_volume_or_an_image(tmp_path, zarr):
    import tifffile

    from cellpose_nb.distributed.io import open_image

    with pytest.raises(ValueError, match="2-D image of shape"):
        open_image(np.zeros((40, 30)), volume=True)
    with pytest.raises(ValueError, match="one slice is a 2-D image"):
        open_image(np.zeros((1, 40, 30)), volume=True)
    with pytest.raises(ValueError, match="needs channel_axis"):
        open_image(np.zeros((5, 40, 30, 2)), volume=True)
    with pytest.raises(ValueError, match="same axis"):
        open_image(np.zeros((5, 40, 30, 2)), z_axis=-1, channel_axis=3, volume=True)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((7, 40, 30), np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"a volume \(7 z planes.*do_3d"):
        open_image(tmp_path / "stack.tif")


def test_writers_keep_a_volume(tmp_path, zarr):
    import tifffile

    from cellpose_nb.data import make_synthetic_volume
    from cellpose_nb.distributed.writers import write_masks_tiff, write_ome_zarr_labels

    lab = make_synthetic_volume((5, 600, 530), n_cells=30, diameter=40, seed=0).labels.astype(np.uint32)
    arr = zarr.create_array(store=str(tmp_path / "l.zarr"), data=lab, chunks=(5, 256, 256))
    arr.attrs["n_cells"] = int(lab.max())
    with tifffile.TiffFile(write_masks_tiff(tmp_path / "l.zarr", tmp_path / "m.tif")) as tif:
        assert tif.series[0].axes == "ZYX" and (tif.asarray() == lab).all()
    ome = write_ome_zarr_labels(tmp_path / "l.zarr", tmp_path / "m.ome.zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(ome / "labels" / "masks")))()))
    assert [d.shape for d in node.data][:2] == [(5, 600, 530), (5, 300, 265)]  # planes kept
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert (np.asarray(node.data[0]) == lab).all()


def test_writers_keep_the_labels(tmp_path, zarr):
    import tifffile

    from cellpose_nb.distributed.writers import write_masks_tiff, write_ome_zarr_labels

    lab = make_synthetic((700, 530), n_cells=40, diameter=30, seed=2).labels.astype(np.uint32)
    arr = zarr.create_array(store=str(tmp_path / "l.zarr"), data=lab, chunks=(256, 256))
    arr.attrs["n_cells"] = int(lab.max())
    tif = write_masks_tiff(tmp_path / "l.zarr", tmp_path / "m.tif")
    back = tifffile.imread(tif)
    assert back.dtype == np.uint16 and (back == lab).all()
    with pytest.raises(FileExistsError):
        write_masks_tiff(tmp_path / "l.zarr", tmp_path / "m.tif")
    ome = write_ome_zarr_labels(tmp_path / "l.zarr", tmp_path / "m.ome.zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(ome / "labels" / "masks")))()))
    assert [d.shape for d in node.data][:2] == [(700, 530), (350, 265)]
    assert (np.asarray(node.data[0]) == lab).all()


def test_a_missing_extra_is_named(monkeypatch):
    import sys

    from cellpose_nb.distributed.io import require

    monkeypatch.setitem(sys.modules, "zarr", None)  # as if not installed
    with pytest.raises(ImportError, match=r"cellpose-nb\[distributed\]"):
        require("zarr")
