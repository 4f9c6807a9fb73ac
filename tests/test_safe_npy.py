"""Crafted ``_seg.npy`` pickles are refused, naming the file, and run nothing."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cellpose_nb.data import read_folder, read_labels
from cellpose_nb.data.safe_npy import UnsafePickleError, load_npy
from cellpose_nb.export import write_seg_npy


class _RunsACommand:
    """Unpickling this runs ``touch <marker>``: what a hostile file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def _crafted(path, payload):
    np.save(path, np.array({"masks": np.eye(4, dtype=np.uint16), "x": payload}, dtype=object),
            allow_pickle=True)
    return path


@pytest.mark.parametrize("payload_kind", ["command", "eval"])
def test_a_crafted_seg_npy_is_refused_and_runs_nothing(tmp_path, payload_kind):
    marker = tmp_path / "ran"
    payload = _RunsACommand(marker) if payload_kind == "command" else _CallsEval()
    bad = _crafted(tmp_path / "evil_seg.npy", payload)
    for read in (read_labels, load_npy):
        with pytest.raises(UnsafePickleError, match=r"evil_seg\.npy.*refused"):
            read(bad)
    assert not marker.exists()


def test_a_folder_with_a_crafted_seg_npy_is_refused(tmp_path):
    import tifffile

    marker = tmp_path / "ran"
    tifffile.imwrite(tmp_path / "a_img.tif", np.zeros((4, 4), np.uint8))
    _crafted(tmp_path / "a_seg.npy", _RunsACommand(marker))
    with pytest.raises(UnsafePickleError, match=r"a_seg\.npy"):
        read_folder(tmp_path)
    assert not marker.exists()


def test_train_command_refuses_a_crafted_folder_without_a_traceback(tmp_path):
    import tifffile

    marker = tmp_path / "ran"
    for k in range(2):
        tifffile.imwrite(tmp_path / f"f{k}_img.tif", np.zeros((32, 32), np.uint8))
        _crafted(tmp_path / f"f{k}_seg.npy", _RunsACommand(marker))
    out = subprocess.run([sys.executable, "-m", "cellpose_nb.cli", "train", str(tmp_path),
                          "--out", str(tmp_path / "run"), "--epochs", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "seg.npy" in out.stderr and "refused" in out.stderr
    assert "Traceback" not in out.stderr
    assert not marker.exists()


def test_real_seg_npy_files_still_load(tmp_path):
    labels = np.zeros((20, 24), np.int32)
    labels[2:8, 3:9] = 1
    labels[10:18, 12:20] = 2
    image = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    path = write_seg_npy(tmp_path / "img_seg.npy", image, labels, diameter=17.0)
    dat = load_npy(path).item()
    assert dat["diameter"] == 17.0 and "flows" in dat
    np.testing.assert_array_equal(read_labels(path), labels)
