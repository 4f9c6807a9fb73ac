"""Bad input, table-driven: each row is a command, the exit code, a phrase the one-line error
must contain, and nothing is lost.  (Crafted pickles: tests/test_safe_npy.py; channel axes and
output collisions: tests/test_cli.py.)"""

import os
import stat

import numpy as np
import pytest
import tifffile

from cellpose_nb.cli import main
from cellpose_nb.data import make_synthetic


@pytest.fixture()
def folder(tmp_path):
    """Two synthetic training pairs and the files the rows need."""
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        s = make_synthetic((64, 64), n_cells=8, diameter=12, kind="nuclei", seed=k)
        tifffile.imwrite(data / f"s{k}_img.tif", s.image[..., 0] if s.image.ndim == 3 else s.image)
        tifffile.imwrite(data / f"s{k}_masks.tif", s.labels.astype(np.uint16))
    (tmp_path / "a_file").write_text("not a model")
    (tmp_path / "csv_dir").mkdir()
    return tmp_path


ROWS = [  # (id, argv with {d} = the fixture folder, exit code, phrase)
    ("B15 inf learning rate", ["train", "{d}/data", "--out", "{d}/run", "--learning-rate", "inf"],
     2, "learning_rate must be finite"),
    ("B19 --diam-mean 0", ["train", "{d}/data", "--out", "{d}/run", "--diam-mean", "0"],
     2, "--diam-mean must be > 0"),
    ("B20 --threads 0", ["train", "{d}/data", "--out", "{d}/run", "--threads", "0"],
     2, "num_threads must be None or a positive integer"),
    ("B22 --model is a file", ["segment", "{d}/data", "--out", "{d}/out", "--model", "{d}/a_file"],
     2, "is a file"),
    ("B27 evaluate --csv DIR", ["evaluate", "{d}/data", "{d}/data", "--csv", "{d}/csv_dir", "--overwrite"],
     2, "is a folder"),
    ("B8 unknown output format", ["segment", "{d}/data", "--out", "{d}/out", "--formats", "masks", "pdf"],
     2, "invalid choice"),
]


@pytest.mark.parametrize("case, argv, code, phrase", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gives_one_clear_line_and_loses_nothing(folder, capsys, case, argv, code, phrase):
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(SystemExit) if phrase == "invalid choice" else _no_raise() as exit_info:
        rc = main([a.format(d=folder) for a in argv])
    rc = exit_info.value.code if phrase == "invalid choice" else rc
    err = capsys.readouterr().err
    assert rc == code, err
    assert phrase in err and "Traceback" not in err
    after = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    assert [p for p in before if p not in after] == []  # nothing of the user's was removed
    assert not (folder / "run" / "checkpoint.pt").exists() and not (folder / "out").exists()


class _no_raise:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_B4_outputs_follow_the_umask(tmp_path):
    from cellpose_nb.export import write_masks_tif

    old = os.umask(0o022)
    try:
        path = write_masks_tif(tmp_path / "m_masks.tif", np.eye(8, dtype=np.int32))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_B17_a_failed_checkpoint_write_leaves_no_temporary(tmp_path, monkeypatch):
    import torch

    from cellpose_nb.train.checkpoint import _atomic_torch_save

    path = tmp_path / "checkpoint.pt"
    _atomic_torch_save({"epoch": 1}, path)

    def full_disk(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"checkpoint\.pt.*No space left"):
        _atomic_torch_save({"epoch": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_B18_a_truncated_cached_flow_file_is_named_and_recomputed(tmp_path):
    from cellpose_nb.flows import masks_to_flows
    from cellpose_nb.train.inputs import cached_flows

    labels = make_synthetic((48, 48), n_cells=5, diameter=12, kind="nuclei", seed=0).labels
    first = cached_flows([labels], cache_dir=tmp_path)[0]
    (cached,) = list(tmp_path.glob("*.npy"))
    cached.write_bytes(cached.read_bytes()[:200])
    with pytest.warns(UserWarning, match=cached.name):
        again = cached_flows([labels], cache_dir=tmp_path)[0]
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again, masks_to_flows(labels))
    np.testing.assert_array_equal(np.load(cached), first)  # the cache is whole again


# ---- library calls: each row a call, the error type, and a phrase of its message ----

def _tiny_model():
    import torch

    from cellpose_nb.model import CellposeUNet, ModelConfig

    torch.manual_seed(0)
    return CellposeUNet(ModelConfig(features=(4, 8), diam_mean=17.0)).eval()


_IMG = make_synthetic((64, 64), n_cells=8, diameter=12, kind="nuclei", seed=0).image


def _segment(image=_IMG, **kw):
    from cellpose_nb.predict import segment

    return segment(image, _tiny_model(), **{"diameter": 12, **kw})


CALLS = [  # (id, call, error type, phrase)
    ("W7 NaN cellprob threshold", lambda: _segment(cellprob_threshold=float("nan")),
     ValueError, "cellprob_threshold must be None or a logit in [-20, 20]"),
    ("W7 huge cellprob threshold", lambda: _segment(cellprob_threshold=1e6), ValueError, "[-20, 20]"),
    ("W7 negative flow threshold", lambda: _segment(flow_threshold=-1), ValueError, "[0, 4]"),
    ("W7 infinite flow threshold", lambda: _segment(flow_threshold=float("inf")), ValueError, "[0, 4]"),
    ("W7 diameter larger than the image", lambda: _segment(diameter=1e6), ValueError,
     "use 1.7 to 64 px"),
    ("W7 NaN diameter", lambda: _segment(diameter=float("nan")), ValueError, "out of range"),
    ("W7 diameter not a number", lambda: _segment(diameter="big"), TypeError,
     "diameter must be a number"),
    ("B12 diameter 1e-3", lambda: _segment(diameter=1e-3), ValueError, "use 1.7 to 64 px"),
    ("B12 diameter 0.2", lambda: _segment(diameter=0.2), ValueError, "use 1.7 to 64 px"),
    ("B12 zoomed image too large", lambda: _segment(np.zeros((20000, 20000), np.uint8), diameter=2),
     ValueError, "segment the image in parts"),
    ("B9 two channels, gray recipe", lambda: _segment(np.random.rand(64, 64, 2), channels=("gray", None)),
     ValueError, "was read as 64 x 64 pixels with 2 channels; pass channels=(0, None)"),
    ("B9 z-stack", lambda: _segment(np.random.rand(5, 64, 64)), ValueError,
     "read as 5 x 64 pixels with 64 channels"),
    ("B11 nested list", lambda: _segment([[1, 2], [3, 4]]), TypeError, "np.asarray(image)"),
    ("B11 empty image", lambda: _segment(np.zeros((0, 5))), ValueError, "image is empty"),
    ("NaN pixels", lambda: _segment(np.full((64, 64), np.nan)), ValueError, "NaN or inf"),
    ("tuned thresholds out of range", lambda: _segment_with_thresholds({"cellprob_threshold": 50.0}),
     ValueError, "the model's tuned thresholds"),
]


def _segment_with_thresholds(thresholds):
    from cellpose_nb.predict import segment

    model = _tiny_model()
    model.record = model.record.replace(thresholds=thresholds)
    return segment(_IMG, model, diameter=12)


@pytest.mark.parametrize("case, call, kind, phrase", CALLS, ids=[r[0] for r in CALLS])
def test_bad_values_are_refused_with_the_allowed_range(case, call, kind, phrase):
    with pytest.raises(kind) as info:
        call()
    assert phrase in str(info.value)


def test_an_estimate_out_of_range_falls_back_to_diam_mean_with_a_warning(monkeypatch):
    from cellpose_nb.predict import passes, segmentation

    model = _tiny_model()
    model.record = model.record.replace(size_model={"coef": [0.0] * 8, "style_mean": [0.0] * 8,
                                                    "target_mean": 0.0, "diam_mean": 17.0})
    monkeypatch.setattr(passes, "style_diameter", lambda *a, **k: 1e-4)
    with pytest.warns(UserWarning, match="estimate cannot be used.*out of range"):
        res = segmentation.segment(_IMG, model)
    assert res.diameter == 17.0


def _flip_header_bits(src, dst, seed):
    import random

    data, rng = bytearray(src.read_bytes()), random.Random(seed)
    for _ in range(3):
        data[rng.randrange(0, 400)] ^= 1 << rng.randrange(8)
    dst.write_bytes(data)


def test_B6_corrupt_tiffs_are_named_in_one_line_without_the_library_log(tmp_path, capfd):
    from cellpose_nb.data import read_image

    good = tmp_path / "good.tif"
    tifffile.imwrite(good, (np.random.default_rng(0).random((128, 128)) * 1000).astype(np.uint16))
    n_refused = 0
    for seed in range(60):  # header bits flipped: each file is read correctly or refused
        bad = tmp_path / f"bad{seed}.tif"
        _flip_header_bits(good, bad, seed)
        try:
            image = read_image(bad)
        except ValueError as exc:
            assert str(exc).startswith(f"cannot read {bad}: the TIFF file is corrupt"), exc
            assert "\n" not in str(exc)
            n_refused += 1
        else:
            assert image.shape == (128, 128) and image.dtype.kind in "uif"
    assert n_refused > 20
    assert capfd.readouterr().err == ""  # tifffile's log did not reach the terminal
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.tif: the TIFF file is corrupt"):
        read_image(tmp_path / "empty.tif")


def test_B6_a_huge_one_bit_claim_is_refused_before_reading(tmp_path):
    from cellpose_nb.data import read_image
    from cellpose_nb.data.files import MAX_TIFF_BYTES

    path = tmp_path / "claims.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["ImageLength"].valueoffset
    data = bytearray(path.read_bytes())  # ImageLength: 2**31 rows of 4 bytes > MAX_TIFF_BYTES
    data[offset:offset + 4] = (2**31).to_bytes(4, "little")
    path.write_bytes(data)
    assert 2**31 * 4 > MAX_TIFF_BYTES
    with pytest.raises(ValueError, match="corrupt or truncated .*GiB image"):
        read_image(path)


def test_the_command_line_exit_codes_and_debug(folder, capsys, monkeypatch):
    from cellpose_nb.cli import segment as segment_cli

    argv = ["segment", f"{folder}/data", "--out", f"{folder}/out"]

    def full_disk(args):
        raise OSError(28, "No space left on device", f"{folder}/out/s0_masks.tif")

    def bug(args):
        raise ZeroDivisionError("division by zero")

    cases = [(full_disk, OSError, f"error: OSError: [Errno 28] No space left on device: "
                                  f"'{folder}/out/s0_masks.tif'"),
             (bug, ZeroDivisionError, "internal error: ZeroDivisionError: division by zero "
                                      "(--debug shows the traceback)")]
    for run, kind, phrase in cases:  # the parser is built per call and binds run then
        monkeypatch.setattr(segment_cli, "run", run)
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err
        for debug_argv in (["--debug"] + argv, argv + ["--debug"]):
            with pytest.raises(kind):
                main(debug_argv)
