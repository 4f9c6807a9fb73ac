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
