"""The ``cellpose-nb`` command: demo, evaluate, segment, train."""

import numpy as np
import pytest
import tifffile

from cellpose_nb.cli import main
from cellpose_nb.data import make_synthetic, read_labels


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
    assert main(["evaluate", str(tmp_path / "true"), str(tmp_path / "pred")]) == 1
    assert "b: no prediction" in capsys.readouterr().err


def test_parse_channels_errors():
    from cellpose_nb.cli_commands import parse_channels

    with pytest.raises(ValueError, match="channel"):
        parse_channels(["cyto", "none"])
