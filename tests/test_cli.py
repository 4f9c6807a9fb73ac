"""The ``cellpose-nb`` command: demo, evaluate, segment, train."""

import contextlib
from unittest import mock

import numpy as np
import pytest
import tifffile

from cellpose_nb.cli import main
from cellpose_nb.data import make_synthetic, read_labels
from cellpose_nb.metrics import average_precision


def test_demo_writes_figure_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "128", "--n-cells", "8"]) == 0
    text = capsys.readouterr().out
    assert "AP@0.50 = 1.000" in text
    assert (out / "demo.png").stat().st_size > 10_000
    labels = read_labels(out / "demo_labels.tif")
    assert labels.shape == (128, 128) and labels.max() >= 6
    before = (out / "demo.png").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--size", "128", "--n-cells", "8"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "demo.png").stat().st_mtime_ns == before
    assert main(["demo", "--out", str(out), "--size", "128", "--n-cells", "8", "--overwrite"]) == 0


def _write_pair(folder, name, sample, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / f"{name}_img.tif", sample.image.astype(np.float32))
    tifffile.imwrite(folder / f"{name}_masks.tif",
                     (sample.labels if labels is None else labels).astype(np.uint16))


def test_evaluate_table_and_csv(tmp_path, capsys):
    a = make_synthetic((96, 96), n_cells=6, diameter=20, seed=1)
    b = make_synthetic((96, 96), n_cells=6, diameter=20, seed=2)
    _write_pair(tmp_path / "true", "a", a)
    _write_pair(tmp_path / "true", "b", b)
    _write_pair(tmp_path / "pred", "a", a)  # perfect
    _write_pair(tmp_path / "pred", "b", b, labels=np.zeros((96, 96), int))  # nothing found
    csv_path = tmp_path / "ap.csv"
    rc = main(["evaluate", str(tmp_path / "true"), str(tmp_path / "pred"), "--csv", str(csv_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "MEAN" in out and "POOLED" in out
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("image,n_true,n_pred,ap@0.5")
    assert rows[1].split(",")[3] == "1.0" and rows[2].split(",")[3] == "0.0"
    # the CSV is not overwritten without --overwrite; a missing prediction is an error
    (tmp_path / "pred" / "b_masks.tif").unlink()
    assert main(["evaluate", str(tmp_path / "true"), str(tmp_path / "pred"), "--csv", str(csv_path)]) == 2
    capsys.readouterr()
    # B26: a missing prediction counts as an empty one (AP 0), is listed, and fails the run
    assert main(["evaluate", str(tmp_path / "true"), str(tmp_path / "pred"),
                 "--csv", str(csv_path), "--overwrite"]) == 1
    assert "1 of 2 images have no prediction" in capsys.readouterr().err
    rows = [r.split(",") for r in csv_path.read_text().splitlines()]
    assert rows[2][0] == "b" and rows[2][3] == "0.0" and "counted as empty" in rows[2][-1]
    assert rows[3][0].startswith("MEAN") and float(rows[3][3]) == 0.5  # b is in the mean
    assert not list(tmp_path.glob(".ap.csv*"))  # no temporary left


def test_parse_channels_errors():
    from cellpose_nb.cli import parse_channels

    with pytest.raises(ValueError, match="channel"):
        parse_channels(["cyto", "none"])


def test_segment_reports_bad_files_skips_done_ones_and_never_overwrites(tmp_path, capsys):
    import torch

    from cellpose_nb.model import CellposeUNet, ModelConfig, save

    torch.manual_seed(0)
    model_dir = save(CellposeUNet(ModelConfig(features=(8, 16), diam_mean=20.0)), tmp_path / "m")
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", make_synthetic((64, 64), n_cells=4, diameter=20, kind="nuclei",
                                                   seed=0).image.astype(np.float32))
    (src / "bad.tif").write_bytes(b"not a tiff at all")
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(model_dir), "--diameter", "20"]
    assert main(argv) == 1  # bad.tif failed, a.tif written
    err = capsys.readouterr().err
    assert "bad.tif: FAILED: ValueError" in err and "not a TIFF" in err
    written = sorted(p.name for p in out.iterdir())
    assert written == [".a.segment.json",  # the marker: these outputs are ours and complete
                       "a_cells.csv", "a_masks.tif", "a_outlines.png", "a_rois.zip", "a_seg.npy"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (src / "bad.tif").unlink()
    assert main(argv) == 0  # a re-run skips what is done
    assert "skipped (already done)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # an incomplete set of our own, unchanged outputs is redone
    (out / "a_rois.zip").unlink()
    assert main(argv) == 0
    assert (out / "a_rois.zip").exists()
    assert (out / "a_masks.tif").stat().st_mtime_ns != before["a_masks.tif"]
    # an output changed since (e.g. corrected in the GUI) is never overwritten without --overwrite
    (out / "a_rois.zip").unlink()
    (out / "a_seg.npy").write_bytes(b"corrected")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 1
    assert "a_seg.npy exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "a_rois.zip").exists() and (out / "a_seg.npy").read_bytes() != b"corrected"


def test_segment_in_bfloat16_finds_the_same_nuclei(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    s = make_synthetic((160, 160), n_cells=14, diameter=17, kind="nuclei", seed=3)
    tifffile.imwrite(src / "a.tif", s.image.astype(np.float32))
    masks = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        assert main(["segment", str(src), "--out", str(out), "--diameter", "17", "--formats",
                     "masks", "--precision", precision]) == 0
        masks[precision] = tifffile.imread(out / "a_masks.tif")
    assert masks["float32"].max() >= 10
    assert average_precision(masks["float32"], masks["bfloat16"], thresholds=[0.5])[0] >= 0.9


def test_train_with_a_validation_list_saves_the_input_recipe(tmp_path, capsys):
    import json

    data = tmp_path / "data"
    data.mkdir()
    for k in range(5):
        s = make_synthetic((96, 96), n_cells=10, diameter=14, kind="nuclei", seed=k)
        tifffile.imwrite(data / f"s{k}_img.tif", (1 - s.image).astype(np.float32))  # dark nuclei
        tifffile.imwrite(data / f"s{k}_masks.tif", s.labels.astype(np.uint16))
    val_list = tmp_path / "val.txt"
    val_list.write_text("s1\ns3\n")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--features", "8", "16",
            "--diam-mean", "14", "--epochs", "1", "--crop-size", "64", "--invert", "auto",
            "--val-list", str(val_list), "--size-passes", "1", "--size-crop", "64",
            "--threads", "1", "--images-per-epoch", "8", "--amp"]
    assert main(args) == 0
    folder = tmp_path / "run" / "model"
    record = json.loads((folder / "training.json").read_text())
    assert sorted(record["val_names"]) == ["s1", "s3"] and record["n_train"] == 3
    assert record["config"]["n_images_per_epoch"] == 8 and record["config"]["amp"] is True
    assert record["precision"] == "bfloat16"  # what ran, whatever the config said
    assert json.loads((folder / "input.json").read_text()) == {"channels": [0, None],
                                                               "invert": "auto"}
    val_list.write_text("s1\nnot_there\n")
    assert main(args[:2] + ["--out", str(tmp_path / "run2")] + args[4:]) == 2
    assert "not_there" in capsys.readouterr().err


@contextlib.contextmanager
def _patched_probes(**kw):
    """Every torch probe of train.precision.BFLOAT16_ISA patched (this CPU may have any)."""
    from cellpose_nb.train.precision import BFLOAT16_ISA

    with contextlib.ExitStack() as stack:
        for probe in BFLOAT16_ISA.values():
            stack.enter_context(mock.patch(f"torch.cpu.{probe}", create=True, **kw))
        yield


def test_train_amp_flag_defaults_to_the_device_rule():
    """No flag: None (mixed precision on cuda and on CPUs with AMX); --amp / --no-amp force it."""
    import torch

    from cellpose_nb.cli import build_parser
    from cellpose_nb.train import TrainConfig, amp_dtype

    parse = build_parser().parse_args
    assert parse(["train", "f", "--out", "o"]).amp is None
    assert parse(["train", "f", "--out", "o", "--amp"]).amp is True
    assert parse(["train", "f", "--out", "o", "--no-amp"]).amp is False
    assert amp_dtype(TrainConfig(amp=None), "cuda") == torch.float16
    with _patched_probes(return_value=False):  # an AVX2 CPU
        assert amp_dtype(TrainConfig(amp=None), "cpu") is None
    with _patched_probes(return_value=True):
        assert amp_dtype(TrainConfig(amp=None), "cpu") == torch.bfloat16
    with _patched_probes(side_effect=AttributeError):
        assert amp_dtype(TrainConfig(amp=None), "cpu") is None  # private API gone: float32
    assert amp_dtype(TrainConfig(amp=None), "mps") is None
    assert amp_dtype(TrainConfig(amp=False), "cuda") is None
    assert amp_dtype(TrainConfig(amp=True), "cpu") == torch.bfloat16


def _defaults(command, argv):
    from cellpose_nb.cli import build_parser

    return vars(build_parser().parse_args([command, *argv]))


def test_segment_defaults_are_segment_configs():
    from argparse import Namespace

    from cellpose_nb.cli.segment import config_from_args
    from cellpose_nb.predict import SegmentConfig

    got = _defaults("segment", ["img.tif", "--out", "o"])
    fields = SegmentConfig.__dataclass_fields__
    for option in ("cellprob_threshold", "flow_threshold", "augment", "tile_size", "device",
                   "precision"):
        assert got[option] == fields[option].default, option
    assert config_from_args(Namespace(**got)) == SegmentConfig()


def test_train_defaults_are_train_configs():
    from cellpose_nb.model import ModelConfig
    from cellpose_nb.train import TrainConfig

    got = _defaults("train", ["folder", "--out", "o"])
    fields = TrainConfig.__dataclass_fields__
    options = {"epochs": "n_epochs", "batch_size": "batch_size", "crop_size": "crop_size",
               "learning_rate": "learning_rate", "optimizer": "optimizer",
               "val_every": "val_every", "seed": "seed", "amp": "amp", "threads": "num_threads",
               "max_minutes": "max_minutes", "images_per_epoch": "n_images_per_epoch",
               "warmup": "warmup_epochs", "decay": "decay_epochs"}
    for option, field in options.items():
        assert got[option] == fields[field].default, option
    assert tuple(got["features"]) == tuple(ModelConfig().features)


def _write_images(folder, shapes):
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    for name, shape in shapes.items():
        img = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
        if name.endswith(".png"):
            import imageio.v3 as iio

            iio.imwrite(folder / name, img)
        else:
            tifffile.imwrite(folder / name, img)


@pytest.mark.parametrize("names", [("a.tif", "a.png"), ("b.tif", "b_img.tif")])
def test_segment_refuses_name_collisions_before_any_work(tmp_path, capsys, names):
    _write_images(tmp_path / "in", {n: (32, 32) for n in names})
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        assert main(["segment", str(tmp_path / "in"), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert names[0] in err and names[1] in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_segment_refuses_to_write_into_the_input_folder(tmp_path, capsys):
    _write_images(tmp_path, {"c_img.tif": (32, 32)})
    assert main(["segment", str(tmp_path), "--out", str(tmp_path), "--formats", "masks"]) == 2
    assert "is the folder of the input images" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_img.tif"]


def test_channels_first_and_z_stacks_are_refused_or_read_with_channel_axis(tmp_path, capsys):
    _write_images(tmp_path / "in", {"cf.tif": (2, 40, 48), "zs.tif": (5, 40, 48)})
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "in"), "--out", str(out), "--channels", "0", "none",
                 "--diameter", "12", "--formats", "masks"]) == 1
    err = capsys.readouterr().err
    assert err.count("--channel-axis") == 2 and not list(out.glob("*_masks.tif"))
    assert main(["segment", str(tmp_path / "in" / "cf.tif"), "--out", str(out), "--channels", "0",
                 "1", "--channel-axis", "0", "--diameter", "12", "--formats", "masks"]) == 0
    assert read_labels(out / "cf_masks.tif").shape == (40, 48)
