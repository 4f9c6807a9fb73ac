"""Bad model files, checkpoints, flow caches and training data, table-driven (issue 14: W5, W6,
B14, B16, B23, B25, W9).  Each row is a damage done to a file or a call, the error kind or exit
code, the phrases the one message must contain (the file, the field, the expected range), and a
check that nothing of the user's was lost.  (Command-line rows of other kinds:
tests/test_bad_input.py.)"""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import tifffile
import torch

from cellpose_nb import model as M
from cellpose_nb.cli import main
from cellpose_nb.data import make_synthetic
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.model import folder as model_folder
from cellpose_nb.train import TrainConfig, cached_flows, prepare_images, train

FEATURES = (4, 8)
DIAM = 12.0
# a tiny, fast, deterministic `cellpose-nb train`
TRAIN = ["--features", *map(str, FEATURES), "--diam-mean", str(DIAM), "--epochs", "2",
         "--batch-size", "2", "--crop-size", "32", "--size-passes", "1", "--size-crop", "32",
         "--threads", "1", "--device", "cpu", "--no-amp", "--warmup", "0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _write_pairs(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        s = make_synthetic((64, 64), n_cells=8, diameter=DIAM, kind="nuclei", seed=k)
        tifffile.imwrite(folder / f"s{k}_img.tif", s.image[..., 0] if s.image.ndim == 3 else s.image)
        tifffile.imwrite(folder / f"s{k}_masks.tif", s.labels.astype(np.uint16))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 64 x 64 training pairs (two train, one validation)."""
    return _write_pairs(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A run stopped by the time budget after one of two epochs: checkpoint, history, flows/."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main(["train", str(data), "--out", str(out), *TRAIN, "--max-minutes", "0"]) == 3
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "history.csv", "flows", "model"}
    return out


def _snapshot(root):
    """Every file under ``root`` with its bytes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_unchanged(before, root):
    after = _snapshot(root)
    assert [p for p in before if p not in after] == []  # nothing removed
    assert [p for p in before if after[p] != before[p]] == []  # nothing overwritten


def _one_clear_line(err, phrases):
    """The command's error is one line that holds every phrase, and no traceback."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


# --- W6, B23 and the rest: model folders ----------------------------------------------
def _tiny_model(features=FEATURES, seed=0):
    torch.manual_seed(seed)
    net = M.CellposeUNet(M.ModelConfig(features=features, diam_mean=DIAM)).eval()
    width = features[-1]
    net.record = net.record.replace(
        thresholds={"cellprob_threshold": -0.5, "flow_threshold": 0.4},
        size_model={"coef": [0.0] * width, "style_mean": [0.0] * width, "target_mean": 0.0,
                    "diam_mean": DIAM},
        input_recipe={"channels": [0, None], "invert": False}, training={"epochs": 1})
    return net


def _edit_json(name, change):
    """A damage: rewrite ``name`` of the model folder with ``change(dict)`` applied."""
    def damage(folder):
        path = folder / name
        value = json.loads(path.read_text())
        change(value)
        path.write_text(json.dumps(value))  # json writes NaN and Infinity as such
    return damage


def _write(name, content):
    def damage(folder):
        (folder / name).write_bytes(content(folder / name) if callable(content) else content)
    return damage


def _other_architecture(folder):
    M.save(_tiny_model((8, 16)), folder / "other")
    shutil.copy(folder / "other" / M.WEIGHTS_FILE, folder / M.WEIGHTS_FILE)
    shutil.rmtree(folder / "other")


def _nan_weight(folder):
    net = M.load(folder)
    with torch.no_grad():
        net.head.conv.weight[0, 0, 0, 0] = float("nan")
    (folder / M.WEIGHTS_FILE).unlink()
    M.save(net, folder, overwrite=True)


def _torch_weights_only(content):
    def damage(folder):
        (folder / M.WEIGHTS_FILE).unlink()
        (folder / "weights.pt").write_bytes(content)
    return damage


def _set(name, **entries):
    return _edit_json(name, lambda d: d.update(entries))


def _set_config(**entries):
    return _edit_json("config.json", lambda d: d["config"].update(entries))


NAN, INF = float("nan"), float("inf")
MODEL_ROWS = [  # (id, damage of a saved model folder, phrases of the error)
    ("W6 NaN cellprob threshold", _set("thresholds.json", cellprob_threshold=NAN),
     ["thresholds.json", "cellprob_threshold", "[-20, 20]", "nan"]),
    ("W6 infinite flow threshold", _set("thresholds.json", flow_threshold=INF),
     ["thresholds.json", "flow_threshold", "[0, 4]"]),
    ("W6 flow threshold out of range", _set("thresholds.json", flow_threshold=-0.5),
     ["thresholds.json", "flow_threshold", "[0, 4]", "-0.5"]),
    ("W6 short-name threshold", _set("thresholds.json", cellprob=99),
     ["thresholds.json", "cellprob", "[-20, 20]", "99"]),
    ("B23 threshold 'abc'", _set("thresholds.json", cellprob_threshold="abc"),
     ["thresholds.json", "cellprob_threshold", "'abc'", "[-20, 20]"]),
    ("thresholds.json a list", _write("thresholds.json", b"[0.5, 0.4]"),
     ["thresholds.json", "JSON object"]),
    ("thresholds.json not JSON", _write("thresholds.json", b"cellprob = 0.5"),
     ["thresholds.json", "not valid JSON"]),
    ("thresholds.json random bytes", _write("thresholds.json", bytes(range(128, 256))),
     ["thresholds.json", "not valid JSON"]),
    ("W6 NaN in size model", _set("size_model.json", target_mean=NAN),
     ["size_model.json", "target_mean", "finite"]),
    ("W6 text in size model",
     _edit_json("size_model.json", lambda d: d["coef"].__setitem__(3, "x")),
     ["size_model.json", "coef[3]", "finite"]),
    ("size model of another width", _set("size_model.json", coef=[0.0] * 3, style_mean=[0.0] * 3),
     ["size_model.json", "coef has 3 values", "style vector has 8"]),
    ("size model without diam_mean", _edit_json("size_model.json", lambda d: d.pop("diam_mean")),
     ["size_model.json", "diam_mean"]),
    ("W6 diam_mean 0 in config", _set_config(diam_mean=0),
     ["config.json", "config.diam_mean", "> 0"]),
    ("W6 NaN diam_mean in config", _set_config(diam_mean=NAN),
     ["config.json", "config.diam_mean", "> 0"]),
    ("W6 infinite diam_labels", _set("config.json", diam_labels=INF),
     ["config.json", "diam_labels", "> 0"]),
    ("W6 features not integers", _set_config(features=[4.5, "8"]),
     ["config.json", "config.features", "positive integers"]),
    ("W6 no features", _set_config(features=[]), ["config.json", "config.features"]),
    ("unknown config field", _set_config(widths=[4]), ["config.json", "widths"]),
    ("config.json not JSON", _write("config.json", b'{"config": '),
     ["config.json", "not valid JSON"]),
    ("W6 bad channels", _set("input.json", channels=[0, 1, 2]),
     ["input.json", "channels", "[0, 1, 2]"]),
    ("W6 no cytoplasm channel", _set("input.json", channels=[None, 0]), ["input.json", "channels"]),
    ("W6 bad invert", _set("input.json", invert="maybe"), ["input.json", "invert", "'maybe'"]),
    ("training.json a number", _write("training.json", b"3"), ["training.json", "JSON object"]),
    ("random-bytes weights", _write(M.WEIGHTS_FILE, os.urandom(512)),
     [M.WEIGHTS_FILE, "not a readable model weights file"]),
    ("truncated weights", _write(M.WEIGHTS_FILE, lambda p: p.read_bytes()[:300]),
     [M.WEIGHTS_FILE, "not a readable model weights file"]),
    ("empty weights", _write(M.WEIGHTS_FILE, b""),
     [M.WEIGHTS_FILE, "not a readable model weights file"]),
    ("weights of another architecture", _other_architecture,
     [M.WEIGHTS_FILE, "has shape (8,", "expects (4,"]),
    ("NaN weights", _nan_weight, [M.WEIGHTS_FILE, "head.conv.weight", "NaN"]),
    ("random-bytes weights.pt", _torch_weights_only(os.urandom(512)),
     ["weights.pt", "not a readable model weights file"]),
]


@pytest.fixture()
def model_dir(tmp_path):
    return M.save(_tiny_model(), tmp_path / "model")


def _assert_one_line_naming(load, path, phrases):
    """``load()`` raises a one-line ValueError that names ``path`` and holds every phrase."""
    with pytest.raises(ValueError) as info:
        load()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for phrase in phrases:
        assert phrase in message, (phrase, message)


def _segment_with(tmp_path, model):
    """Exit code of ``cellpose-nb segment`` of one synthetic image with ``--model model``."""
    image = tmp_path / "a_img.tif"
    tifffile.imwrite(image, make_synthetic((64, 64), n_cells=5, diameter=DIAM, seed=0).image)
    return main(["segment", str(image), "--out", str(tmp_path / "out"), "--model", model,
                 "--diameter", str(DIAM)])


@pytest.mark.parametrize("case, damage, phrases", MODEL_ROWS, ids=[r[0] for r in MODEL_ROWS])
def test_a_bad_model_file_is_named_with_its_field(model_dir, tmp_path, capsys, case, damage,
                                                  phrases):
    assert M.load(model_dir).record.thresholds  # the folder is good before the damage
    damage(model_dir)
    before = _snapshot(model_dir)
    _assert_one_line_naming(lambda: M.load(model_dir), model_dir, phrases)
    # the command line: one line, exit code 2, no output folder
    rc = _segment_with(tmp_path, str(model_dir))
    assert rc == 2
    _one_clear_line(capsys.readouterr().err, [str(model_dir), *phrases])
    assert not (tmp_path / "out").exists()
    _assert_unchanged(before, model_dir)  # a failed load changes nothing


def test_a_good_model_folder_still_loads_and_shipped_ones_pass_the_checks(model_dir):
    net = M.load(model_dir)
    assert net.record == _tiny_model().record
    for name in ("nuclei", "cyto_cil"):
        assert M.load_pretrained(name).record.thresholds["cellprob_threshold"] == -0.5


def test_save_refuses_to_write_what_load_would_refuse(tmp_path):
    net = _tiny_model()
    net.record = net.record.replace(thresholds={"cellprob_threshold": float("nan")})
    with pytest.raises(ValueError, match=r"cannot save .*model\.record\.thresholds: "
                                         r"cellprob_threshold must be a finite number in "
                                         r"\[-20, 20\]; got nan"):
        M.save(net, tmp_path / "m")
    net.record = net.record.replace(thresholds=None, diam_labels=float("inf"))
    with pytest.raises(ValueError, match=r"diam_labels must be a finite number > 0"):
        M.save(net, tmp_path / "m")
    assert not (tmp_path / "m").exists()  # refused before anything was written
    ends = {"cellprob": -20, "flow": 4}  # the ends of the ranges are allowed
    net.record = net.record.replace(thresholds=ends, diam_labels=None)
    assert M.load(M.save(net, tmp_path / "m")).record.thresholds == ends


# --- B25 and the rest: Cellpose weight files ------------------------------------------
def _cellpose_file(path, change):
    state = M.to_cellpose_state_dict(_tiny_model())
    change(state)
    torch.save(state, path)


def _set_state(**entries):
    return lambda state: state.update(entries)


def _our_names(state):
    state.clear()
    state.update(_tiny_model().state_dict())


FIRST_CPNET_WEIGHT = "downsample.down.res_down_0.proj.1.weight"
CELLPOSE_ROWS = [  # (id, change to a CPnet state dict, or the file's bytes; phrases)
    ("B25 NaN diam_mean", _set_state(diam_mean=torch.tensor([NAN])), ["diam_mean", "NaN"]),
    ("B25 NaN diam_mean as a scalar", _set_state(diam_mean=torch.tensor(NAN)),
     ["diam_mean", "NaN"]),
    ("B25 negative diam_mean", _set_state(diam_mean=torch.tensor([-17.0])),
     ["diam_mean", "> 0", "-17"]),
    ("B25 empty diam_mean", _set_state(diam_mean=torch.zeros(0)), ["diam_mean", "one number"]),
    ("B25 zero diam_labels", _set_state(diam_labels=torch.tensor([0.0])), ["diam_labels", "> 0"]),
    ("a 1-D first weight", _set_state(**{FIRST_CPNET_WEIGHT: torch.zeros(4)}),
     [FIRST_CPNET_WEIGHT, "convolution weight", "(4,)"]),
    ("our names, not CPnet's", _our_names, ["not a Cellpose CPnet state dict"]),
    ("random bytes", os.urandom(700), ["not a readable model weights file"]),
    ("truncated", "truncate", ["not a readable model weights file"]),
    ("empty", b"", ["not a readable model weights file"]),
]


@pytest.mark.parametrize("case, change, phrases", CELLPOSE_ROWS, ids=[r[0] for r in CELLPOSE_ROWS])
def test_a_bad_cellpose_weights_file_is_named(tmp_path, capsys, case, change, phrases):
    path = tmp_path / "cp_model"
    if callable(change):
        _cellpose_file(path, change)
    else:
        _cellpose_file(path, lambda s: None)
        path.write_bytes(path.read_bytes()[:400] if change == "truncate" else change)
    _assert_one_line_naming(lambda: M.load_cellpose_weights(path), path, phrases)
    assert _segment_with(tmp_path, f"cellpose:{path}") == 2
    _one_clear_line(capsys.readouterr().err, [str(path), *phrases])
    assert not (tmp_path / "out").exists()


def test_a_good_cellpose_file_with_a_scalar_diam_mean_loads(tmp_path):
    _cellpose_file(tmp_path / "cp", lambda s: s.update(diam_mean=torch.tensor(17.0)))
    assert M.load_cellpose_weights(tmp_path / "cp").config.diam_mean == 17.0


# --- W5: save() replaces only a model's files, all or nothing -----------------------------
def test_W5_save_without_overwrite_refuses_any_model_file(tmp_path):
    (tmp_path / "thresholds.json").write_text('{"cellprob_threshold": 1.0}')  # the user's
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="thresholds.json exists"):
        M.save(_tiny_model(), tmp_path)
    _assert_unchanged(before, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thresholds.json"]


def test_W5_save_overwrite_replaces_the_model_files_and_keeps_the_users(model_dir):
    (model_dir / "notes.txt").write_text("my notes")
    (model_dir / "weights.safetensors.bak").write_bytes(b"my backup")
    net = _tiny_model(seed=1)
    net.record = net.record.replace(thresholds=None)
    M.save(net, model_dir, overwrite=True)
    assert (model_dir / "notes.txt").read_text() == "my notes"
    assert (model_dir / "weights.safetensors.bak").read_bytes() == b"my backup"
    assert not (model_dir / M.THRESHOLDS_FILE).exists()  # stale: load() must not read it
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        {M.WEIGHTS_FILE, M.CONFIG_FILE, M.TRAINING_FILE, M.INPUT_FILE, M.SIZE_MODEL_FILE,
         "notes.txt", "weights.safetensors.bak"})  # no temporaries left
    back = M.load(model_dir)
    torch.testing.assert_close(back.head.conv.weight, net.head.conv.weight)


def test_W5_a_save_that_fails_midway_leaves_the_old_model_whole(model_dir, monkeypatch):
    before = _snapshot(model_dir)
    real_writer, calls = model_folder._writer, []

    def full_disk(data):  # the second file hits a full disk
        def write(tmp):
            calls.append(tmp)
            if len(calls) == 2:
                tmp.write_bytes(b"{\"partial")
                raise OSError(28, "No space left on device")
            real_writer(data)(tmp)
        return write

    monkeypatch.setattr(model_folder, "_writer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        M.save(_tiny_model(seed=2), model_dir, overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 2
    _assert_unchanged(before, model_dir)
    assert set(_snapshot(model_dir)) == set(before)  # and no temporary is left
    torch.testing.assert_close(M.load(model_dir).head.conv.weight, _tiny_model().head.conv.weight)


# --- W5, B16, B14: `cellpose-nb train` ---------------------------------------------------
def _save_model_into(run):
    M.save(_tiny_model(), run / "model")


def _checkpoint(change):
    """A damage of the stopped run's checkpoint: ``change(saved dict)`` or raw bytes."""
    def damage(run):
        path = run / "checkpoint.pt"
        if isinstance(change, bytes) or change == "truncate":
            path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]
                             if change == "truncate" else change)
            return
        saved = torch.load(path, weights_only=True)
        result = change(saved)
        torch.save(saved if result is None else result, path)
    return damage


def _other_net(saved):
    saved["model"] = _tiny_model((8, 16)).state_dict()


def _other_optimizer_state(saved):
    saved["optimizer"]["param_groups"] = []


# (id, --out: a model folder only or a copy of the stopped run, a damage of it, extra argv,
#  phrases; early: refused before the flows are computed)
TRAIN_ROWS = [
    ("W5 a model without checkpoint", "model", None, [],
     ["{run} holds an earlier training run (model)", "--overwrite"], True),
    ("W5 an earlier run with checkpoint", "stopped", None, [],
     ["{run} holds an earlier training run", "--resume", "--overwrite"], True),
    ("W5 --resume and --overwrite", "stopped", None, ["--resume", "--overwrite"],
     ["pass one of them"], True),
    ("W5 --resume without checkpoint", "model", None, ["--resume"], ["no checkpoint {run}"], True),
    ("B16 truncated checkpoint", "stopped", _checkpoint("truncate"), ["--resume"],
     ["checkpoint {run}/checkpoint.pt is unreadable", "truncated", "--overwrite"], True),
    ("B16 random-bytes checkpoint", "stopped", _checkpoint(os.urandom(1000)), ["--resume"],
     ["checkpoint {run}/checkpoint.pt is unreadable", "--overwrite"], True),
    ("B16 empty checkpoint", "stopped", _checkpoint(b""), ["--resume"],
     ["checkpoint {run}/checkpoint.pt is empty"], True),
    ("B16 checkpoint without optimizer", "stopped", _checkpoint(lambda s: s.pop("optimizer") and None),
     ["--resume"], ["checkpoint {run}/checkpoint.pt has no 'optimizer' entry"], True),
    ("B16 checkpoint of another architecture", "stopped", _checkpoint(_other_net),
     ["--resume"], ["checkpoint {run}/checkpoint.pt", "has shape (8,", "expects (4,",
                    "another architecture"], True),
    ("B16 checkpoint of a list", "stopped", _checkpoint(lambda s: [1, 2]), ["--resume"],
     ["checkpoint {run}/checkpoint.pt holds a list"], True),
    ("B16 checkpoint with a text epoch", "stopped", _checkpoint(lambda s: s.update(epoch="one")),
     ["--resume"], ["checkpoint {run}/checkpoint.pt", "'epoch' must be a number of epochs"], True),
    ("B16 checkpoint past the last epoch", "stopped", _checkpoint(lambda s: s.update(epoch=99)),
     ["--resume"], ["checkpoint {run}/checkpoint.pt is at epoch 99", "0 to 2"], True),
    # the optimizer exists only once the run is set up: this one is found after the flows
    ("B16 checkpoint of another optimizer state", "stopped", _checkpoint(_other_optimizer_state),
     ["--resume"], ["checkpoint {run}/checkpoint.pt", "optimizer state does not fit"], False),
]


@pytest.mark.parametrize("case, start, damage, argv, phrases, early", TRAIN_ROWS,
                         ids=[r[0] for r in TRAIN_ROWS])
def test_train_refuses_with_one_line_and_loses_nothing(data, stopped_run, tmp_path, capsys, case,
                                                       start, damage, argv, phrases, early):
    run = tmp_path / "run"
    if start == "model":
        _save_model_into(run)
    else:
        shutil.copytree(stopped_run, run)
        shutil.rmtree(run / "flows")  # so that computing them would show
    if damage is not None:
        damage(run)
    before = _snapshot(run)
    capsys.readouterr()
    rc = main(["train", str(data), "--out", str(run), *TRAIN, *argv])
    assert rc == 2
    _one_clear_line(capsys.readouterr().err, [p.format(run=run) for p in phrases])
    _assert_unchanged(before, run)
    new = {p.parts[0] for p in set(_snapshot(run)) - set(before)}
    assert new == (set() if early else {"flows"})  # no model, checkpoint or history written


def test_W5_overwrite_starts_again_and_keeps_the_users_files(data, stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)  # with its model folder
    (run / "model" / "notes.txt").write_text("mine")
    (run / "my_plot.png").write_bytes(b"png")
    old_weights = (run / "model" / M.WEIGHTS_FILE).read_bytes()
    assert main(["train", str(data), "--out", str(run), *TRAIN, "--overwrite"]) == 0
    assert (run / "model" / "notes.txt").read_text() == "mine"
    assert (run / "my_plot.png").read_bytes() == b"png"
    assert (run / "model" / M.WEIGHTS_FILE).read_bytes() != old_weights
    assert M.load(run / "model").record.training["epochs_done"] == 2
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_B14_a_nan_pixel_names_the_image_file(tmp_path, capsys):
    folder = _write_pairs(tmp_path / "data")
    image = tifffile.imread(folder / "s1_img.tif").astype(np.float32)
    image[:5, :5] = np.nan
    tifffile.imwrite(folder / "s1_img.tif", image)
    before = _snapshot(tmp_path)
    assert main(["train", str(folder), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    _one_clear_line(capsys.readouterr().err, [str(folder / "s1_img.tif"), "25 NaN or inf"])
    _assert_unchanged(before, tmp_path)
    assert not (tmp_path / "run").exists()


def _put(part, k, index, value):
    """A change of part 0-3 of (train images, train labels, val images, val labels)."""
    def change(parts):
        parts[part][k][index] = value
    return change


def _crop_labels(parts):
    parts[1][0] = parts[1][0][:32]


ARRAY_ROWS = [  # (id, change to the train/val arrays, names of the train images, phrase)
    ("B14 NaN in training image 1", _put(0, 1, (0, 0, 0), np.nan), None,
     "training image 1 contains 1 NaN or inf values"),
    ("B14 inf in named training image", _put(0, 1, (1, 2, 3), np.inf), ["a", "b"],
     "training image 1 (b) contains 1 NaN or inf values"),
    ("B14 NaN in validation image 0", _put(2, 0, (0, 0, 0), np.nan), None,
     "validation image 0 contains 1 NaN or inf values"),
    ("B14 labels of another shape", _crop_labels, None,
     "training image 0 is (64, 64) but its labels are (32, 64)"),
    ("B14 negative labels", _put(1, 1, (0, 0), -3), ["a", "b"], "training labels 1 (b)"),
]


@pytest.mark.parametrize("case, change, names, phrase", ARRAY_ROWS, ids=[r[0] for r in ARRAY_ROWS])
def test_B14_train_with_arrays_names_the_bad_item(tmp_path, case, change, names, phrase):
    samples = [make_synthetic((64, 64), n_cells=8, diameter=DIAM, kind="nuclei", seed=k)
               for k in range(3)]
    x = prepare_images([s.image for s in samples])
    y = [s.labels.astype(np.int32) for s in samples]
    images, labels, val_images, val_labels = parts = x[:2], y[:2], x[2:], y[2:]
    change(parts)
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        train(images, labels, M.ModelConfig(features=FEATURES, diam_mean=DIAM),
              config=TrainConfig(n_epochs=1, num_threads=1, device="cpu", amp=False),
              val_data=(val_images, val_labels), names=names, out_dir=tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# --- W9: cached flows are checked against their labels ---------------------------------------
def _labels(seed=0):
    return make_synthetic((48, 48), n_cells=5, diameter=DIAM, kind="nuclei", seed=seed).labels


def _other_flows(path):
    np.save(path, masks_to_flows(_labels(seed=1)))  # right shape, another image's flows


def _swap_records(path):
    """The record of another cache entry copied over this one's."""
    other = cached_flows([_labels(seed=1)], cache_dir=path.parent)  # noqa: F841
    records = sorted(path.parent.glob("*.json"))
    mine = path.with_suffix(".json")
    shutil.copy(next(r for r in records if r != mine), mine)


FLOW_ROWS = [  # (id, damage of the cached file, phrase of the warning)
    ("W9 a (2, 10, 10) array", lambda p: np.save(p, np.zeros((2, 10, 10), np.float32)),
     "have shape (2, 10, 10), not (2, 48, 48)"),
    ("W9 zeros of the right shape", lambda p: np.save(p, np.zeros((2, 48, 48), np.float32)),
     "do not match their checksum"),
    ("W9 another image's flows", _other_flows, "do not match their checksum"),
    ("W9 truncated", lambda p: p.write_bytes(p.read_bytes()[:200]), "are unreadable"),
    ("W9 no checksum record", lambda p: p.with_suffix(".json").unlink(), "have no"),
    ("W9 a record not JSON", lambda p: p.with_suffix(".json").write_text("{"), "are unreadable"),
    ("W9 another entry's record", _swap_records, "were computed from other labels"),
]


@pytest.mark.parametrize("case, damage, phrase", FLOW_ROWS, ids=[r[0] for r in FLOW_ROWS])
def test_W9_damaged_cached_flows_are_named_and_recomputed(tmp_path, case, damage, phrase):
    labels = _labels()
    want = masks_to_flows(labels)
    np.testing.assert_array_equal(cached_flows([labels], cache_dir=tmp_path)[0], want)
    (path,) = [p for p in tmp_path.glob("*.npy")]
    damage(path)
    with pytest.warns(UserWarning, match=path.name) as seen:
        got = cached_flows([labels], cache_dir=tmp_path)[0]
    assert any(phrase in str(w.message) for w in seen), [str(w.message) for w in seen]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.load(path), want)  # the cache is whole again ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ... and trusted without a warning
        np.testing.assert_array_equal(cached_flows([labels], cache_dir=tmp_path)[0], want)


def test_W9_resume_recomputes_a_damaged_flow_file(data, stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    damaged = sorted((run / "flows").glob("*.npy"))[0]
    good = np.load(damaged)
    np.save(damaged, np.zeros_like(good))  # right shape, wrong values
    with pytest.warns(UserWarning, match=damaged.name):
        assert main(["train", str(data), "--out", str(run), *TRAIN, "--resume"]) == 0
    np.testing.assert_array_equal(np.load(damaged), good)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
