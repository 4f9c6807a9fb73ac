"""Block-wise segmentation on a 2-worker dask LocalCluster, against whole-image ``segment``.

The large test: a 4096 x 4096 synthetic nuclei image (16 tiles of 1024 x 1024
drawn with their own seeds), stored as zarr, in 512 x 512 blocks.  The
stitched result is compared with ``segment`` of the whole image, and every
true cell that crosses a block line is checked not to be split.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from cellpose_nb.data import make_synthetic
from cellpose_nb.distributed.quality import crossing_labels, split_labels
from cellpose_nb.metrics import matching

DIAMETER = 34.0  # nuclei model diam_mean 17: the image is halved for the network (fast)
TILE = 1024  # side of the synthetic tiles the large image is made of
CELLS_PER_TILE = 420  # about 40 % of the area
BIG_BLOCK = 512


@pytest.fixture(scope="module")
def nuclei():
    from cellpose_nb.model import load_pretrained

    return load_pretrained("nuclei")


def _tiled_sample(n_tiles, seed=0):
    """An (n*TILE)^2 image and its labels, from n*n synthetic tiles (distinct label ids)."""
    rows, labs, offset = [], [], 0
    for i in range(n_tiles):
        row_img, row_lab = [], []
        for j in range(n_tiles):
            s = make_synthetic((TILE, TILE), n_cells=CELLS_PER_TILE, diameter=DIAMETER, kind="nuclei",
                               seed=seed + i * n_tiles + j)
            row_img.append(s.image)
            row_lab.append(np.where(s.labels > 0, s.labels + offset, 0))
            offset += int(s.labels.max())
        rows.append(np.concatenate(row_img, 1))
        labs.append(np.concatenate(row_lab, 1))
    return np.concatenate(rows, 0), np.concatenate(labs, 0)


@pytest.fixture(scope="module")
def big(tmp_path_factory, nuclei, one_torch_thread_module):
    from cellpose_nb.predict import segment

    image, truth = _tiled_sample(4096 // TILE)
    path = tmp_path_factory.mktemp("big") / "big.zarr"
    zarr.create_array(store=str(path), data=image, chunks=(BIG_BLOCK, BIG_BLOCK))
    whole = segment(image, nuclei, diameter=DIAMETER).labels
    return path, truth, whole


@pytest.fixture(scope="module")
def one_torch_thread_module():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_4096_image_in_512_blocks_agrees_with_whole_image_segment(big, client, tmp_path):
    from cellpose_nb.distributed import segment_large
    from cellpose_nb.export import cell_table

    path, truth, whole = big
    res = segment_large(path, "nuclei", out=tmp_path / "m.zarr", diameter=DIAMETER,
                        block_size=BIG_BLOCK, client=client)
    labels = zarr.open_array(str(res.path), mode="r")
    assert labels.shape == truth.shape and labels.dtype == np.uint32
    assert labels.chunks == (BIG_BLOCK, BIG_BLOCK) and res.n_blocks == 64
    stitched = labels[:]
    m50, m90 = matching(whole, stitched, thresholds=[0.5, 0.9])
    assert m50.ap >= 0.99 and m90.ap >= 0.97, (m50, m90)
    # no true cell that crosses a block line is in two pieces (unless whole-image segment splits it too)
    crossing = crossing_labels(truth, BIG_BLOCK)
    assert len(crossing) > 200
    split = sorted(set(split_labels(truth, stitched, crossing)) - set(split_labels(truth, whole, crossing)))
    # (true label 1730 of this image was in two pieces by IoU alone: one block merged it with its
    # neighbour; the partnerless-label rule, STITCH_CONTAINED, keeps it whole)
    assert split == [], split
    # ids 1..N, and the cell table gathered from the blocks is the label image's
    assert res.n_cells == int(stitched.max()) == len(np.unique(stitched)) - 1
    ref = cell_table(stitched)
    assert res.cells["area"].tolist() == [r["area"] for r in ref]
    np.testing.assert_allclose(res.cells["centroid_col"], [r["centroid_col"] for r in ref])
    assert not any(p.name.endswith(".blocks.zarr") for p in tmp_path.iterdir())  # work removed


def test_two_channels_a_block_size_that_does_not_divide_and_a_model_object(client, tmp_path):
    from cellpose_nb.distributed import segment_large
    from cellpose_nb.model import load_pretrained
    from cellpose_nb.predict import segment

    model = load_pretrained("cyto_cil")
    d = 2 * float(model.config.diam_mean)
    s = make_synthetic((720, 650), n_cells=60, diameter=d, kind="cyto", seed=4)
    path = tmp_path / "cyto.zarr"  # stored channels first
    zarr.create_array(store=str(path), data=np.moveaxis(s.image, -1, 0), chunks=(1, 256, 256))
    res = segment_large(path, model, out=tmp_path / "m.ome.zarr", diameter=d, block_size=384,
                        channel_axis=0, channels=(0, 1), client=client)
    assert res.n_blocks == 4 and any("network's grid" in n for n in res.notes)
    stitched = zarr.open_array(str(res.path / "labels" / "masks" / "s0"), mode="r")[:]
    whole = segment(s.image, model, diameter=d, channels=(0, 1)).labels
    m50, m90 = matching(whole, stitched, thresholds=[0.5, 0.9])
    # ~57 cells: one cell below IoU 0.9 costs 0.034 of AP@0.9 (the 0.97 bound is the 4096 test's)
    assert m50.ap >= 0.99 and m90.ap >= 0.95, (m50, m90)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    s = make_synthetic((600, 520), n_cells=120, diameter=DIAMETER, kind="nuclei", seed=7)
    path = tmp_path_factory.mktemp("small") / "small.zarr"
    zarr.create_array(store=str(path), data=s.image, chunks=(200, 200))
    return path, s


def test_resume_skips_finished_blocks_and_refuses_other_settings(small, client, tmp_path):
    import shutil

    from cellpose_nb.distributed import segment_large
    from cellpose_nb.distributed.run import work_store_for

    path, _ = small
    out = tmp_path / "m.zarr"
    block = 320  # 2 x 2 blocks
    first = segment_large(path, "nuclei", out=out, diameter=DIAMETER, block_size=block, client=client,
                          keep_work=True)
    want = zarr.open_array(str(out))[:]
    work = work_store_for(out)
    assert first.n_resumed == 0 and work.is_dir()
    with pytest.raises(FileExistsError, match="m.zarr"):  # never replaced without overwrite
        segment_large(path, "nuclei", out=out, diameter=DIAMETER, block_size=block, client=client)
    shutil.rmtree(out)
    with pytest.raises(FileExistsError, match="other settings"):  # not resumed from
        segment_large(path, "nuclei", out=out, diameter=DIAMETER + 2, block_size=block, client=client)
    # an interrupted run: one block without its done record, its labels lost
    group = zarr.open_group(str(work), mode="r+")
    group["count"][1, 1] = -1
    group["ext"][1, 1] = 0
    again = segment_large(path, "nuclei", out=out, diameter=DIAMETER, block_size=block, client=client)
    assert again.n_resumed == first.n_blocks - 1 == 3
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], want)
    assert not work.exists()


def test_bad_arguments_fail_before_work(small, client, tmp_path):
    from cellpose_nb.distributed import segment_large

    path, _ = small
    with pytest.raises(ValueError, match="must end in"):
        segment_large(path, "nuclei", out=tmp_path / "m.png", diameter=DIAMETER, client=client)
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        segment_large(tmp_path / "missing.zarr", "nuclei", out=tmp_path / "m.zarr", client=client)
    with pytest.raises(ValueError, match="client or a scheduler"):
        segment_large(path, "nuclei", out=tmp_path / "m.zarr", client=client, scheduler="tcp://x:1")
    with pytest.raises(TypeError, match="unknown segment knob"):
        segment_large(path, "nuclei", out=tmp_path / "m.zarr", client=client, augmnet=True)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_scheduler_is_named_within_seconds(small, tmp_path):
    import time

    from cellpose_nb.distributed import segment_large

    path, _ = small
    t0 = time.monotonic()
    with pytest.raises(OSError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9 within"):
        segment_large(path, "nuclei", out=tmp_path / "m.zarr", diameter=DIAMETER, scheduler="tcp://127.0.0.1:9")
    assert time.monotonic() - t0 < 20  # the 5 s timeout, the model loaded on the client first
    assert list(tmp_path.iterdir()) == []


def test_a_missing_or_corrupt_chunk_is_named_before_any_block_is_segmented(small, client, tmp_path):
    import shutil

    from cellpose_nb.distributed import segment_large

    path, _ = small  # 600 x 520 in chunks of 200: 3 x 3 chunks, stored as c/<row>/<col>
    holes, bad = tmp_path / "holes.zarr", tmp_path / "bad.zarr"
    shutil.copytree(path, holes)
    (holes / "c" / "1" / "2").unlink()
    with pytest.raises(ValueError, match="holes.zarr: 1 of 9 chunks are missing"):
        segment_large(holes, "nuclei", out=tmp_path / "m.zarr", diameter=DIAMETER, client=client)
    shutil.copytree(path, bad)
    (bad / "c" / "1" / "2").write_bytes(b"not a chunk")
    with pytest.raises(ValueError, match=r"bad.zarr .*cannot read the pixels of rows 0:600, cols 0:520"):
        segment_large(bad, "nuclei", out=tmp_path / "m.zarr", diameter=DIAMETER, client=client)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zarr", "holes.zarr"]  # no work store


def test_a_worker_that_dies_mid_run_loses_only_its_block(small, tmp_path):
    import os
    import signal
    import time
    from concurrent.futures import ThreadPoolExecutor

    from cellpose_nb.distributed import segment_large
    from cellpose_nb.distributed.run import work_store_for

    path, _ = small
    out = tmp_path / "m.zarr"
    kw = dict(diameter=DIAMETER, block_size=200)  # 9 blocks
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        before = set(c.scheduler_info()["workers"])
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(segment_large, path, "nuclei", out=out, client=c, **kw)
            counts = work_store_for(out) / "count"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the first block done: the others are under way
                try:
                    if (zarr.open_array(str(counts), mode="r")[:] >= 0).any():
                        break
                except Exception:  # the work store is not there yet
                    pass
                time.sleep(0.2)
            busy = [w for w, tasks in c.processing().items() if tasks]
            assert busy, "no block was running when the worker was to die"
            pid = c.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
            res = run.result(timeout=300)
        after = set(c.scheduler_info()["workers"])
    assert busy[0] not in after and len(after) == 2 and before != after  # the nanny restarted it
    again = segment_large(path, "nuclei", out=tmp_path / "again.zarr", client=None, n_workers=1, **kw)
    np.testing.assert_array_equal(zarr.open_array(str(res.path))[:], zarr.open_array(str(again.path))[:])
    assert res.n_cells == again.n_cells and res.n_resumed == 0


# --- the command line ----------------------------------------------------------------------
def _write_folder(folder, n=3):
    import tifffile

    folder.mkdir()
    for k in range(n):
        s = make_synthetic((260, 300), n_cells=35, diameter=DIAMETER, kind="nuclei", seed=20 + k)
        tifffile.imwrite(folder / f"im{k}.tif", s.image)


def test_folder_on_dask_equals_the_serial_run(client, tmp_path, capsys):
    import tifffile

    from cellpose_nb.cli import main

    _write_folder(tmp_path / "imgs")
    common = ["--diameter", str(DIAMETER), "--formats", "masks", "csv", "seg"]
    addr = ["--dask", "--scheduler", client.scheduler.address]
    assert main(["segment", str(tmp_path / "imgs"), "--out", str(tmp_path / "serial"), *common]) == 0
    assert main(["segment", str(tmp_path / "imgs"), "--out", str(tmp_path / "dask"), *common, *addr]) == 0
    serial, dask = tmp_path / "serial", tmp_path / "dask"
    assert sorted(p.name for p in serial.iterdir()) == sorted(p.name for p in dask.iterdir())
    for k in range(3):
        np.testing.assert_array_equal(tifffile.imread(serial / f"im{k}_masks.tif"),
                                      tifffile.imread(dask / f"im{k}_masks.tif"))
        assert (serial / f"im{k}_cells.csv").read_text() == (dask / f"im{k}_cells.csv").read_text()
        assert json.loads((dask / f".im{k}.segment.json").read_text())["complete"] is True
    capsys.readouterr()
    # the same resume and no-overwrite rules: done images skipped, a user's file kept
    (dask / "im1_masks.tif").unlink()
    (dask / "im2_cells.csv").write_text("mine")
    assert main(["segment", str(tmp_path / "imgs"), "--out", str(dask), *common, *addr]) == 1
    captured = capsys.readouterr()
    assert "im0.tif: done by an earlier run" in captured.out
    assert "im2_cells.csv exists" in captured.err and (dask / "im2_cells.csv").read_text() == "mine"
    assert "1 of 3 images segmented" in captured.out and (dask / "im1_masks.tif").exists()


def test_large_image_on_the_command_line(small, client, tmp_path, capsys):
    import csv

    import tifffile

    from cellpose_nb.cli import main

    _, sample = small
    tif = tmp_path / "scan.tif"
    tifffile.imwrite(tif, sample.image, tile=(128, 128))
    args = ["segment", str(tif), "--out", str(tmp_path / "res"), "--diameter", str(DIAMETER),
            "--dask", "--scheduler", client.scheduler.address, "--block-size", "320"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "outlines, rois, seg not written" in captured.err and "dask dashboard" in captured.err
    masks = tifffile.imread(tmp_path / "res" / "scan_masks.tif")
    assert masks.shape == sample.labels.shape
    assert matching(sample.labels, masks, thresholds=[0.5])[0].ap > 0.8
    with open(tmp_path / "res" / "scan_cells.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == masks.max() and int(rows[0]["area"]) == int((masks == 1).sum())
    assert main(args) == 0 and "done by an earlier run" in capsys.readouterr().out
    # zarr masks on request; dask-only options without --dask are a usage error
    assert main([*args, "--masks-format", "zarr"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "res" / "scan_masks.zarr"))[:], masks)
    assert main(["segment", str(tif), "--out", str(tmp_path / "x"), "--block-size", "256"]) == 2
    assert "only work with --dask" in capsys.readouterr().err


def _numba_threads_in_task(plugin):
    import types

    import numba

    from cellpose_nb.distributed._worker import _model

    before = numba.get_num_threads()
    _model(types.SimpleNamespace(plugin=plugin))
    return before, numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS


def test_a_one_thread_worker_runs_numba_on_one_thread(client):
    """numba's count is per thread: set in the task's thread, to the worker's dask threads."""
    from cellpose_nb.distributed._worker import ModelPlugin

    client.register_plugin(ModelPlugin("nuclei"), name="numba-threads-test")
    try:
        results = client.run(lambda: None)  # the workers are up
        assert len(results) == 2
        futures = [client.submit(_numba_threads_in_task, "numba-threads-test", pure=False, workers=[w])
                   for w in results]
        for before, after, available in client.gather(futures):
            assert after == 1, f"numba ran on {after} threads in a 1-thread worker (of {available}; before {before})"
    finally:
        client.unregister_worker_plugin("numba-threads-test")
