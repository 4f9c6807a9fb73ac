"""Volumes block by block on a 2-worker dask LocalCluster, against whole-volume 2.5D ``segment``.

A synthetic two-channel volume (touching cells, a nucleus in each, Z sampled
twice as coarsely as Y and X) is stored as zarr and its nuclei are segmented
in 2.5D in blocks that cut every axis, planes included.  The stitched result
is compared with ``segment(..., do_3d=True)`` of the whole volume, and every
true nucleus that crosses a block face is checked not to be split.
"""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from cellpose_nb.data import make_synthetic_volume
from cellpose_nb.distributed.quality import crossing_labels, split_labels
from cellpose_nb.metrics import matching

ANISOTROPY = 2.0
NUCLEUS = 16.0  # px in-plane: cells of 36 px, nuclei 0.4-0.5 of them
SHAPE = (48, 160, 160)
BLOCK = (24, 80, 80)  # 2 x 2 x 2 blocks; the halo is (16, 32, 32)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    import torch

    from cellpose_nb.model import load_pretrained
    from cellpose_nb.predict import segment

    v = make_synthetic_volume(SHAPE, n_cells=30, diameter=36.0, anisotropy=ANISOTROPY, seed=3)
    path = tmp_path_factory.mktemp("vol") / "vol.zarr"
    zarr.create_array(store=str(path), data=v.image, chunks=(8, 64, 64, 2))  # (Z, Y, X, C)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = segment(v.image, load_pretrained("nuclei"), diameter=NUCLEUS, channels=(1, None),
                        channel_axis=-1, do_3d=True, anisotropy=ANISOTROPY).labels
    finally:
        torch.set_num_threads(old)
    return path, v, whole


def _flat(labels):
    """IoU does not change when a volume is viewed as a (Z, Y * X) image: matching is 2-D."""
    return labels.reshape(labels.shape[0], -1)


def test_volume_in_blocks_agrees_with_whole_volume_segment(volume, client, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from cellpose_nb.distributed import segment_large
    from cellpose_nb.export3d import cell_table_3d

    path, v, whole = volume
    res = segment_large(path, "nuclei", out=tmp_path / "m.ome.zarr", diameter=NUCLEUS, block_size=BLOCK,
                        channels=(1, None), channel_axis=-1, do_3d=True, anisotropy=ANISOTROPY,
                        client=client, keep_work=True)
    assert res.n_blocks == 8 and res.halo == (16, 32, 32) and res.block_size == BLOCK
    node = next(iter(Reader(parse_url(str(res.path / "labels" / "masks")))()))
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    stitched = np.asarray(node.data[0])
    assert stitched.shape == SHAPE and res.n_cells == stitched.max() > 20
    m50, m90 = matching(_flat(whole), _flat(stitched), thresholds=[0.5, 0.9])
    assert m50.ap >= 0.99 and m90.ap >= 0.97, (m50, m90)
    crossing = crossing_labels(v.nuclei, BLOCK)
    assert len(crossing) >= 10  # the test means something: planes, rows and columns are cut
    split = split_labels(v.nuclei, stitched, crossing)
    assert split == [], f"{len(split)} of {len(crossing)} crossing nuclei split: {split}"
    # the cell table, summed from the blocks, is that of the stitched volume
    ref = cell_table_3d(stitched)
    assert res.cells["volume"].tolist() == [r["volume"] for r in ref]
    np.testing.assert_allclose(res.cells["centroid_z"], [r["centroid_z"] for r in ref])
    assert res.cells["bbox_row1"].tolist() == [r["bbox_row1"] for r in ref]
    # a re-run of the same settings finds every block done
    again = segment_large(path, "nuclei", out=tmp_path / "m.ome.zarr", diameter=NUCLEUS, block_size=BLOCK,
                          channels=(1, None), channel_axis=-1, do_3d=True, anisotropy=ANISOTROPY,
                          client=client, overwrite=True)
    assert again.n_resumed == 8 and again.n_cells == res.n_cells


def test_bad_volume_arguments_fail_before_work(volume, client, tmp_path):
    from cellpose_nb.distributed import segment_large

    path, v, _ = volume
    kw = dict(diameter=NUCLEUS, client=client, channel_axis=-1, channels=(1, None))
    with pytest.raises(ValueError, match="2-D image with channels"):
        segment_large(v.image[0], "nuclei", out=tmp_path / "a.zarr", do_3d=True, **kw)
    with pytest.raises(ValueError, match="2-D image of shape"):
        segment_large(v.image[0, ..., 1], "nuclei", out=tmp_path / "a.zarr", do_3d=True,
                      diameter=NUCLEUS, client=client)
    with pytest.raises(ValueError, match="pass do_3d=True"):
        segment_large(path, "nuclei", out=tmp_path / "a.zarr", anisotropy=2.0, **kw)
    with pytest.raises(ValueError, match="anisotropy must be a finite positive"):
        segment_large(path, "nuclei", out=tmp_path / "a.zarr", do_3d=True, anisotropy=0.0, **kw)
    with pytest.raises(ValueError, match=r"block_size 8 \(planes\) is smaller than the halo of 16"):
        segment_large(path, "nuclei", out=tmp_path / "a.zarr", do_3d=True, anisotropy=ANISOTROPY,
                      block_size=(8, 80, 80), **kw)
    thin = v.image[:3]  # 3 planes at anisotropy 1 and half scale: 1 slice for the network
    with pytest.raises(ValueError, match="smallest block of the volume"):
        segment_large(thin, "nuclei", out=tmp_path / "a.zarr", do_3d=True, **{**kw, "diameter": 34.0})
    assert list(tmp_path.iterdir()) == []


def test_volume_on_the_command_line(client, tmp_path, capsys):
    import csv

    import tifffile

    from cellpose_nb.cli import main

    v = make_synthetic_volume((20, 96, 96), n_cells=8, diameter=36.0, anisotropy=ANISOTROPY, seed=5)
    tif = tmp_path / "stack.tif"  # a nuclear stain stack, its axes in the ImageJ metadata
    stain = v.image[..., 1]
    tifffile.imwrite(tif, (stain / stain.max() * 60000).astype(np.uint16), imagej=True,
                     metadata={"axes": "ZYX"})
    out = tmp_path / "res"
    args = ["segment", str(tif), "--out", str(out), "--diameter", str(NUCLEUS), "--3d",
            "--anisotropy", str(ANISOTROPY), "--dask", "--scheduler", client.scheduler.address,
            "--block-size", "48"]
    assert main(args) == 0
    assert "in 4 blocks" in capsys.readouterr().out
    with tifffile.TiffFile(out / "stack_masks.tif") as f:
        masks = f.asarray()
        assert f.series[0].axes == "ZYX" and masks.shape == v.nuclei.shape
    assert matching(_flat(v.nuclei), _flat(masks), thresholds=[0.5])[0].ap >= 0.8
    with open(out / "stack_cells.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == masks.max() and int(rows[0]["volume"]) == int((masks == 1).sum())
    assert main(["segment", str(tif), "--out", str(out), "--stitch-threshold", "0.5", "--dask"]) == 2
    assert "--stitch-threshold does not work with --dask" in capsys.readouterr().err
    # a folder of stacks on the workers: the serial command's files, stack by stack
    folder = tmp_path / "stacks"
    folder.mkdir()
    tif.rename(folder / "stack.tif")
    volume = ["--diameter", str(NUCLEUS), "--3d", "--anisotropy", str(ANISOTROPY)]
    assert main(["segment", str(folder), "--out", str(tmp_path / "serial"), *volume]) == 0
    assert main(["segment", str(folder), "--out", str(tmp_path / "dask"), *volume, "--dask",
                 "--scheduler", client.scheduler.address]) == 0
    serial = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert serial == sorted(p.name for p in (tmp_path / "dask").iterdir()) and "stack_seg.npy" in serial
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "serial" / "stack_masks.tif"),
                                  tifffile.imread(tmp_path / "dask" / "stack_masks.tif"))
