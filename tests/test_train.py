"""Training: Cellpose's loss and schedule, the loop's files, resume, NaN guard, size model,
threshold search, and a whole folder end to end -- all on tiny synthetic data and networks."""

import csv
import json
import warnings

import numpy as np
import pytest
import tifffile
import torch

from cellpose_nb import train as T
from cellpose_nb.predict import predict_flows
from cellpose_nb.predict.net import _masks_at_scale
from cellpose_nb.train import recipe, steps
from cellpose_nb.train.thresholds import _masks_over_flow_grid
from cellpose_nb.data import make_synthetic, make_synthetic_dataset
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.masks import compute_masks
from cellpose_nb.model import CellposeUNet, ModelConfig, load, save

TINY = (8, 16, 32, 64)  # features of the test networks
DIAM = 16.0


def tiny_net(seed=0, diam_mean=DIAM):
    torch.manual_seed(seed)
    return CellposeUNet(ModelConfig(features=TINY, diam_mean=diam_mean))


def tiny_config(**kw):
    # float32 unless a test asks: amp=None would mean bfloat16 on CPUs with AMX only
    base = dict(n_epochs=3, batch_size=2, crop_size=64, warmup_epochs=0, num_threads=1,
                val_every=1, save_every=1, device="cpu", seed=0, amp=False)
    return T.TrainConfig(**{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_data():
    ds = make_synthetic_dataset(8, shape=(96, 96), seed=0, n_cells=10, diameter=DIAM,
                                kind="nuclei")
    return T.prepare_images([s.image for s in ds]), [s.labels for s in ds]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """One uninterrupted 3-epoch run, shared by several tests."""
    images, labels = tiny_data
    out = tmp_path_factory.mktemp("run")
    res = T.train(images[:6], labels[:6], tiny_net(), config=tiny_config(),
                  val_data=(images[6:], labels[6:]), out_dir=out, progress=False,
                  names=[f"im{k}" for k in range(6)], command=["pytest", "tiny"])
    return res


# --- loss and schedule against Cellpose --------------------------------------------
def test_loss_equals_cellpose(cellpose_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cellpose.train import _loss_fn_seg
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.normal(size=(3, 3, 16, 16)).astype(np.float32) * 3)
    flows = rng.normal(size=(3, 2, 16, 16)).astype(np.float32)
    mask = rng.random((3, 16, 16)) > 0.5
    lbl = np.concatenate([mask[:, None].astype(np.float32), flows], axis=1)  # Cellpose's layout
    theirs = _loss_fn_seg(lbl, y, torch.device("cpu"))
    ours = T.segmentation_loss(y, torch.from_numpy(flows), torch.from_numpy(mask))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def _cellpose_schedule(learning_rate, n_epochs):
    """Copied from cellpose.train.train_seg (3.1.1.2)."""
    LR = np.linspace(0, learning_rate, 10)
    LR = np.append(LR, learning_rate * np.ones(max(0, n_epochs - 10)))
    if n_epochs > 300:
        LR = LR[:-100]
        for i in range(10):
            LR = np.append(LR, LR[-1] / 2 * np.ones(10))
    elif n_epochs > 100:
        LR = LR[:-50]
        for i in range(10):
            LR = np.append(LR, LR[-1] / 2 * np.ones(5))
    return LR[:n_epochs]


@pytest.mark.parametrize("n_epochs", [4, 10, 60, 150, 500])
def test_schedule_equals_cellpose(n_epochs):
    ours = T.learning_rate_schedule(T.TrainConfig(n_epochs=n_epochs, learning_rate=0.2))
    np.testing.assert_allclose(ours, _cellpose_schedule(0.2, n_epochs))


def test_median_diameter_equals_cellpose(cellpose_ref):
    labels = make_synthetic((128, 128), n_cells=15, diameter=20, seed=1).labels
    assert T.median_diameter(labels) == pytest.approx(cellpose_ref.utils.diameters(labels)[0])
    assert T.median_diameter(np.zeros((4, 4), np.int32)) == 0.0


# --- the loop and its files ----------------------------------------------------------
def test_training_lowers_the_loss_and_writes_its_files(trained, tiny_data):
    images, labels = tiny_data
    losses = [h["train_loss"] for h in trained.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert trained.completed and not trained.model.training
    out = trained.out_dir
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == T.HISTORY_COLUMNS and len(rows) == 3
    assert np.isfinite(float(rows[-1]["val_loss"])) and 0 <= float(rows[-1]["val_ap50"]) <= 1
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and {"model", "optimizer", "history"} <= set(ckpt)
    record = json.loads((out / "model" / "training.json").read_text())
    assert record["data_hash"] == T.data_hash(images[:6], labels[:6])
    assert {"torch", "numpy", "cellpose_nb", "python"} <= set(record["versions"])
    assert record["config"]["n_epochs"] == 3 and record["seed"] == 0
    assert record["command"] == ["pytest", "tiny"] and record["train_names"][0] == "im0"
    assert len(record["history"]) == 3
    loaded = load(out / "model")
    assert loaded.config.features == TINY
    assert loaded.record.diam_labels == pytest.approx(trained.model.record.diam_labels)
    assert len(list((out / "flows").glob("*.npy"))) == 8  # train + val flows cached


def test_resume_equals_an_uninterrupted_run(trained, tiny_data, tmp_path):
    images, labels = tiny_data
    net = tiny_net()
    kw = dict(val_data=(images[6:], labels[6:]), out_dir=tmp_path, progress=False)
    # max_minutes=0: every call runs exactly one epoch, then stops resumably
    first = T.train(images[:6], labels[:6], net, config=tiny_config(max_minutes=0), **kw)
    assert not first.completed and len(first.history) == 1
    with pytest.raises(FileExistsError, match="resume=True"):
        T.train(images[:6], labels[:6], tiny_net(), config=tiny_config(), **kw)
    for _ in range(2):
        res = T.train(images[:6], labels[:6], tiny_net(seed=5), config=tiny_config(max_minutes=0),
                      resume=True, **kw)
    assert res.completed
    assert [h["train_loss"] for h in res.history] == pytest.approx(
        [h["train_loss"] for h in trained.history], rel=1e-5)
    for key, value in trained.model.state_dict().items():
        torch.testing.assert_close(res.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="learning_rate"):
        T.train(images[:6], labels[:6], tiny_net(), config=tiny_config(learning_rate=0.1),
                resume=True, **kw)


def test_resume_accepts_a_checkpoint_older_than_new_config_fields(tiny_data, tmp_path):
    """A checkpoint written before a TrainConfig field existed resumes when the field
    has its default, and refuses when it does not."""
    images, labels = tiny_data
    kw = dict(out_dir=tmp_path, progress=False)
    T.train(images[:2], labels[:2], tiny_net(), config=tiny_config(n_epochs=2, max_minutes=0),
            **kw)
    path = tmp_path / T.CHECKPOINT_FILE
    saved = torch.load(path, weights_only=True)
    for name in ("val_fraction", "size_passes", "size_crop", "cellprob_grid"):
        del saved["config"][name]
    torch.save(saved, path)
    with pytest.raises(ValueError, match="val_fraction"):
        T.train(images[:2], labels[:2], tiny_net(), resume=True,
                config=tiny_config(n_epochs=2, val_fraction=0.5), **kw)
    res = T.train(images[:2], labels[:2], tiny_net(), resume=True,
                  config=tiny_config(n_epochs=2, size_passes=3), **kw)  # acts after the loop
    assert res.completed and len(res.history) == 2


def test_training_from_a_trained_model_keeps_its_record(trained, tiny_data, tmp_path):
    import copy

    images, labels = tiny_data
    net = copy.deepcopy(trained.model)
    T.train(images[:6], labels[:6], net, config=tiny_config(n_epochs=1), out_dir=tmp_path,
            progress=False, command=["pytest", "stage 2"])
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["command"] == ["pytest", "stage 2"] and len(record["history"]) == 1
    assert record["pretrained"]["command"] == ["pytest", "tiny"]  # the first stage, whole
    assert record["pretrained"]["history"] == json.loads(json.dumps(trained.history))
    assert "pretrained" not in record["pretrained"]


def test_amp_on_the_cpu_trains_in_bfloat16(trained, tiny_data):
    images, labels = tiny_data
    net = tiny_net()
    seen = []
    net.encoder[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype)
                                      if mod.training else None)
    res = T.train(images[:6], labels[:6], net, config=tiny_config(amp=True, val_every=3),
                  val_data=(images[6:], labels[6:]), progress=False)
    assert seen and set(seen) == {torch.bfloat16}  # the convolutions ran in bfloat16
    assert all(p.dtype == torch.float32 for p in res.model.parameters())  # weights stay float32
    amp_losses = [h["train_loss"] for h in res.history]
    fp32_losses = [h["train_loss"] for h in trained.history]
    assert np.all(np.isfinite(amp_losses)) and amp_losses[-1] < amp_losses[0]
    assert amp_losses != fp32_losses  # autocast changed the numbers ...
    assert amp_losses == pytest.approx(fp32_losses, rel=0.05)  # ... by little


def test_nan_loss_stops_with_a_clear_error(tiny_data, monkeypatch):
    images, labels = tiny_data
    monkeypatch.setattr(steps, "segmentation_loss",
                        lambda y, f, m: (y * float("nan")).mean())
    with pytest.raises(RuntimeError, match=r"epoch 1, batch 1.*lower learning_rate"):
        T.train(images[:2], labels[:2], tiny_net(), config=tiny_config(), progress=False)


def test_ctrl_c_saves_a_checkpoint(tiny_data, tmp_path, monkeypatch):
    images, labels = tiny_data
    calls = {"n": 0}
    real = steps.random_transform

    def interrupt_in_epoch_two(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 4:  # 4 crops = epoch 1 with 4 images
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(steps, "random_transform", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        T.train(images[:4], labels[:4], tiny_net(), config=tiny_config(save_every=10),
                out_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_bad_inputs_are_explained(tiny_data):
    images, labels = tiny_data
    with pytest.raises(ValueError, match="prepare_images"):
        T.train([np.zeros((96, 96), np.float32)], labels[:1], tiny_net(), config=tiny_config())
    with pytest.raises(ValueError, match="diam_mean"):
        T.train(images[:2], labels[:2], tiny_net(), config=tiny_config(diam_mean=30.0))
    with pytest.raises(ValueError, match="optimizer"):
        T.TrainConfig(optimizer="adam")
    with pytest.warns(UserWarning, match="min_train_masks"), pytest.raises(ValueError):
        T.train(images[:1], [np.zeros((96, 96), np.int32)], tiny_net(), config=tiny_config())


def test_split_is_deterministic_and_stratified():
    strata = ["a"] * 20 + ["b"] * 5
    tr, va = T.split_train_val(25, val_fraction=0.2, seed=0, strata=strata)
    tr2, va2 = T.split_train_val(25, val_fraction=0.2, seed=0, strata=strata)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert sum(v < 20 for v in va) == 4 and sum(v >= 20 for v in va) == 1
    assert sorted([*tr, *va]) == list(range(25))


# --- size model and thresholds -------------------------------------------------------
def test_size_model_reads_diameters_from_styles():
    sizes = [8, 12, 16, 24, 32]
    samples = [make_synthetic((128, 128), n_cells=int(6000 / d**2) + 3, diameter=d,
                              kind="nuclei", seed=k) for k, d in enumerate(sizes * 2)]
    images = T.prepare_images([s.image for s in samples])
    labels = [s.labels for s in samples]
    net = tiny_net()  # even random conv features carry the scale of the objects
    sm = T.fit_size_model(images[:5], labels[:5], net, n_passes=6, crop_size=96,
                          l2_regularization=1e-3)
    truth = np.array([T.median_diameter(lab) for lab in labels[5:]])
    guess = np.array([T.estimate_diameter(x, net, size_model=sm, refine=False).diameter
                      for x in images[5:]])
    assert np.all(np.abs(np.log(guess / truth)) < np.log(1.3))
    again = T.SizeModel.from_dict(json.loads(json.dumps(sm.to_dict())))
    np.testing.assert_allclose(again.predict(np.ones((1, 64))), sm.predict(np.ones((1, 64))))
    with pytest.raises(ValueError, match="size model"):
        T.estimate_diameter(images[0], net)


def test_size_model_crops_are_zoomed_over_the_zoom_range():
    from cellpose_nb.train.size_model import _size_samples

    sample = make_synthetic((96, 96), n_cells=12, diameter=12, kind="nuclei", seed=4)
    net = tiny_net()
    targets = _size_samples(net, T.prepare_images([sample.image]), [sample.labels], n_passes=30,
                            crop_size=64, zoom_range=T.SIZE_ZOOM_RANGE, seed=0,
                            progress=False)[1]
    d = T.median_diameter(sample.labels)
    log_zoom = targets - np.log(d / net.config.diam_mean)  # target = log(zoom * d / diam_mean)
    bound = np.log(T.SIZE_ZOOM_RANGE)
    assert targets.shape == (30,) and np.all(np.abs(log_zoom) <= bound + 1e-6)
    assert log_zoom.min() < -0.6 * bound and log_zoom.max() > 0.6 * bound


def test_flow_grid_shortcut_equals_compute_masks():
    labels = make_synthetic((96, 96), n_cells=10, diameter=16, kind="nuclei", seed=2).labels
    rng = np.random.default_rng(0)
    flows = masks_to_flows(labels) + rng.normal(0, 0.4, (2, 96, 96)).astype(np.float32)
    cellprob = np.where(labels > 0, 3.0, -3.0) + rng.normal(0, 2, labels.shape)
    grid = (0.2, 0.4, 0.0)
    fast = _masks_over_flow_grid(flows, cellprob, 0.5, grid, 200, 15)
    for threshold, got in zip(grid, fast):
        want = compute_masks(flows, cellprob, cellprob_threshold=0.5, flow_threshold=threshold)
        np.testing.assert_array_equal(got, want)


def test_optimize_thresholds_returns_grid_values(trained, tiny_data, tmp_path):
    import copy

    images, labels = tiny_data
    net = copy.deepcopy(trained.model)
    best = T.optimize_thresholds(images[6:], labels[6:], net, cellprob_grid=(-1, 0, 1),
                                 flow_grid=(0.4, 0.8))
    assert best.cellprob_threshold in (-1, 0, 1) and best.flow_threshold in (0.4, 0.8)
    assert best.grid_ap.shape == (3, 2) and best.cellprob_grid == (-1.0, 0.0, 1.0)
    assert best.mean_ap == np.nanmax(best.grid_ap)
    assert best.thresholds == {"cellprob_threshold": best.cellprob_threshold,
                               "flow_threshold": best.flow_threshold}
    assert net.record.thresholds is None  # nothing kept until the caller says so
    net.record = net.record.replace(thresholds=best.to_dict())
    save(net, tmp_path)
    stored = json.loads((tmp_path / "thresholds.json").read_text())
    assert stored == best.to_dict() and set(stored) >= set(best.thresholds)
    assert np.array(stored["grid"]["mean_ap"], float).shape == (3, 2)


def test_train_folder_end_to_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k, s in enumerate(make_synthetic_dataset(5, shape=(80, 80), seed=1, n_cells=8,
                                                 diameter=DIAM, kind="nuclei")):
        tifffile.imwrite(data / f"s{k}_img.tif", s.image)
        tifffile.imwrite(data / f"s{k}_masks.tif", s.labels.astype(np.uint16))
    config = tiny_config(n_epochs=2, val_fraction=0.2, size_passes=2, size_crop=64)
    res = T.train_folder(data, out_dir=tmp_path / "run", config=config,
                         model=ModelConfig(features=TINY, diam_mean=DIAM), progress=False,
                         command="cellpose-nb train")
    assert res.completed
    folder = tmp_path / "run" / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"weights.safetensors", "config.json", "training.json", "thresholds.json",
            "size_model.json"} <= names
    net = load(folder)
    training = net.record.training
    assert training["val_names"] and len(training["train_names"]) == 4
    assert set(net.record.thresholds) >= {"cellprob_threshold", "flow_threshold"}
    assert training["thresholds"] == net.record.thresholds
    assert net.record.input_recipe == T.InputRecipe().to_dict()
    assert json.loads((folder / "size_model.json").read_text()) == training["size_model"]
    x = T.prepare_images([tifffile.imread(data / "s0_img.tif")])[0]
    est = T.estimate_diameter(x, net)  # the size model comes from training.json
    assert est.diameter >= T.MIN_DIAMETER and est.diameter_style >= T.MIN_DIAMETER
    assert T.load_size_model(folder).diam_mean == DIAM


def test_train_folder_seeds_the_weights_not_the_global_rng(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for k, s in enumerate(make_synthetic_dataset(2, shape=(48, 48), seed=1, n_cells=6,
                                                 diameter=DIAM, kind="nuclei")):
        tifffile.imwrite(data / f"s{k}_img.tif", s.image)
        tifffile.imwrite(data / f"s{k}_masks.tif", s.labels.astype(np.uint16))
    seen = {}

    def no_training(images, labels, net, **kw):  # the initial weights, without training
        seen.update({k: v.clone() for k, v in net.state_dict().items()})
        return T.TrainResult(net, [], False, None, None)

    monkeypatch.setattr(recipe, "train", no_training)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    T.train_folder(data, out_dir=tmp_path / "run", config=T.TrainConfig(seed=7, val_fraction=0.5),
                   model=ModelConfig(features=TINY, diam_mean=DIAM), progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched ...
    want = tiny_net(seed=7).state_dict()  # ... and the weights are torch.manual_seed(7)'s
    assert seen.keys() == want.keys()
    assert all(torch.equal(seen[k], want[k]) for k in want)


def test_training_predictions_are_segments_outputs():
    # validation AP, the size model and optimize_thresholds see exactly what segment() computes
    from cellpose_nb.predict import segment

    s = make_synthetic((200, 170), n_cells=20, diameter=16, kind="nuclei", seed=0)
    x = T.prepare_images([s.image])[0]
    net = tiny_net().eval()
    diameter = 13.0
    pred = predict_flows(x, net, scale=net.config.diam_mean / diameter)
    seg = segment(s.image, net, diameter=diameter, cellprob_threshold=0.0, flow_threshold=0.4)
    np.testing.assert_array_equal(pred.flows, seg.flows)
    np.testing.assert_array_equal(pred.cellprob, seg.cellprob)
    masks = _masks_at_scale(x, net, scale=net.config.diam_mean / diameter)
    np.testing.assert_array_equal(masks, seg.labels)

def test_float16_path_scales_the_loss_and_checkpoints_the_scaler(tiny_data, tmp_path,
                                                                monkeypatch):
    """The cuda recipe (float16 autocast + GradScaler), run on the CPU: float16 needs
    loss scaling, and the scaler's state goes into the checkpoint for resuming."""
    images, labels = tiny_data
    monkeypatch.setitem(T.AMP_DTYPES, "cpu", torch.float16)
    net = tiny_net()
    seen = []
    net.encoder[1].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype)
                                         if mod.training else None)
    res = T.train(images[:6], labels[:6], net, config=tiny_config(amp=True, n_epochs=2),
                  out_dir=tmp_path / "run", progress=False)
    assert seen and set(seen) == {torch.float16}
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    losses = [h["train_loss"] for h in res.history]
    assert np.all(np.isfinite(losses))
    saved = torch.load(tmp_path / "run" / T.CHECKPOINT_FILE, weights_only=True)
    assert saved["scaler"] and saved["scaler"]["scale"] > 1  # a live loss scale was saved
    record = json.loads((res.model_dir / "training.json").read_text())
    assert record["precision"] == "float16"
    assert record["precision_reason"] == "float16 autocast: amp=True"


@pytest.mark.parametrize("isa, want", [("amx_bf16", torch.bfloat16), ("avx512_bf16", torch.bfloat16),
                                       (None, None)])
def test_cpu_mixed_precision_follows_the_isa_flags(monkeypatch, isa, want):
    """AMX or AVX512-BF16 (e.g. AMD Zen 4, no AMX) -> bfloat16; plain AVX2 -> float32."""
    from cellpose_nb.train import precision

    for name, probe in T.BFLOAT16_ISA.items():
        monkeypatch.setattr(torch.cpu, probe, lambda name=name: name == isa, raising=False)
    assert precision.cpu_bfloat16_isa() == isa
    assert T.amp_dtype(T.TrainConfig(), "cpu") == want
    reason = T.precision_reason(T.TrainConfig(), "cpu")
    assert (isa in reason) if isa else ("none of amx_bf16, avx512_bf16" in reason)
