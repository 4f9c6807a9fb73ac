"""Tests of cellpose_nb.model: shapes, CPnet oracle, save/load, Cellpose interop."""

import importlib
import io
import json
import os
import re
import types
import urllib.error
import urllib.request
import warnings

import pytest
import torch

from cellpose_nb import model as M

SMALL = M.ModelConfig(features=(8, 16, 32))


def _reference(module: str):
    """Import the reference package; under CI=true its absence is a failure, not a skip.

    Deprecation warnings raised while importing it (torch.utils.mkldnn, imported by
    cellpose.core, uses torch.jit.script_method) are third-party noise; importorskip
    silences them too, so both branches behave alike.
    """
    if os.environ.get("CI") != "true":
        return pytest.importorskip(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(module)


def _randomise_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so that eval mode is tested."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.2)
    return net.eval()


def _small_model(config=SMALL, seed=0) -> M.CellposeUNet:
    torch.manual_seed(seed)
    return _randomise_batchnorm(M.CellposeUNet(config))


# --- architecture -------------------------------------------------------------------
def test_forward_shapes_and_unit_style():
    torch.manual_seed(0)
    net = M.CellposeUNet().eval()
    deepest = []
    net.encoder[-1].register_forward_hook(lambda _m, _i, out: deepest.append(out))
    with torch.no_grad():
        y, style = net(torch.randn(2, 2, 32, 48))
    assert y.shape == (2, 3, 32, 48)
    assert style.shape == (2, 256)
    torch.testing.assert_close(style.norm(dim=1), torch.ones(2))
    mean = deepest[0].mean(dim=(2, 3))
    torch.testing.assert_close(style, mean / mean.norm(dim=1, keepdim=True))


def test_smaller_width_is_a_config_change():
    config = M.ModelConfig(features=(16, 32, 64, 128))
    net = M.CellposeUNet(config).eval()
    with torch.no_grad():
        y, style = net(torch.zeros(1, 2, 16, 16))
    assert y.shape == (1, 3, 16, 16) and style.shape == (1, 128)
    assert M.count_parameters(net) < M.count_parameters(M.CellposeUNet()) / 3


def test_input_not_divisible_raises():
    net = M.CellposeUNet(SMALL)
    with pytest.raises(ValueError, match=r"\(1, 2, 30, 32\).*multiples of 4"):
        net(torch.zeros(1, 2, 30, 32))
    with pytest.raises(ValueError, match=r"expected \(B, 2, H, W\)"):
        net(torch.zeros(1, 3, 32, 32))


def test_config_validates_and_round_trips():
    assert M.ModelConfig.from_dict(json.loads(json.dumps(SMALL.to_dict()))) == SMALL
    with pytest.raises(ValueError, match="kernel_size"):
        M.ModelConfig(kernel_size=2)
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        M.ModelConfig.from_dict({"widths": [1]})


def test_feature_map_shapes_match_a_real_forward():
    shapes = M.feature_map_shapes(M.ModelConfig(), (1, 2, 64, 64))
    names = [name for name, _ in shapes]
    assert names == ["input", "encoder.0", "encoder.1", "encoder.2", "encoder.3", "style",
                     "decoder.3", "decoder.2", "decoder.1", "decoder.0", "head"]
    table = dict(shapes)
    assert table["encoder.3"] == (1, 256, 8, 8) and table["decoder.3"] == (1, 256, 8, 8)
    assert table["decoder.0"] == (1, 32, 64, 64) and table["head"] == (1, 3, 64, 64)
    assert table["style"] == (1, 256)
    small = M.feature_map_shapes(SMALL, (1, 2, 8, 8))
    with torch.no_grad():
        y, style = M.CellposeUNet(SMALL).eval()(torch.zeros(1, 2, 8, 8))
    assert dict(small)["head"] == tuple(y.shape) and dict(small)["style"] == tuple(style.shape)


def test_count_parameters_matches_cellpose():
    assert M.count_parameters(M.CellposeUNet()) == 6_600_843  # CPnet([2,32,64,128,256], 3, 3)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert M.resolve_device() == torch.device("cpu")
    assert M.resolve_device("auto") == torch.device("cpu")
    assert M.resolve_device("cpu") == torch.device("cpu")
    assert M.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda"):
        M.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        M.resolve_device("tpu9")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert M.resolve_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert M.resolve_device() == torch.device("cuda")


def test_cellpose_key_mapping_round_trips():
    state = M.CellposeUNet().state_dict()
    assert list(M.from_cellpose_keys(M.to_cellpose_keys(state))) == list(state)
    with pytest.raises(KeyError, match="not a CellposeUNet parameter"):
        M.to_cellpose_keys({"encoder.0.bogus.weight": None})


# --- oracle: cellpose.resnet_torch.CPnet --------------------------------------------
@pytest.mark.reference
def test_cpnet_weights_into_ours_give_the_same_output():
    resnet = _reference("cellpose.resnet_torch")
    torch.manual_seed(1)
    cpnet = _randomise_batchnorm(resnet.CPnet([2, 32, 64, 128, 256], 3, 3))
    ours = M.from_cellpose_state_dict(cpnet.state_dict())
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        y_ref, style_ref, _ = cpnet(x)
        y, style = ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(style, style_ref, atol=1e-6, rtol=0)


@pytest.mark.reference
def test_our_weights_into_cpnet_give_the_same_output():
    resnet = _reference("cellpose.resnet_torch")
    ours = _small_model(M.ModelConfig(), seed=2)
    cpnet = resnet.CPnet([2, 32, 64, 128, 256], 3, 3)
    cpnet.load_state_dict(M.to_cellpose_state_dict(ours))  # strict: every key matches
    cpnet.eval()
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        y_ref, style_ref, _ = cpnet(x)
        y, style = ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(style, style_ref, atol=1e-6, rtol=0)


@pytest.mark.reference
def test_exported_weights_load_in_cellpose_model(tmp_path):
    models = _reference("cellpose.models")
    ours = _small_model(M.ModelConfig(diam_mean=17.0), seed=3)
    ours.record = ours.record.replace(diam_labels=12.5)
    path = M.export_cellpose_weights(ours, tmp_path / "exported")
    cp = models.CellposeModel(pretrained_model=str(path), device=torch.device("cpu"))
    expected = M.to_cellpose_state_dict(ours)
    for key, value in cp.net.state_dict().items():
        torch.testing.assert_close(value.cpu(), expected[key], atol=0, rtol=0, msg=key)
    assert cp.diam_mean == pytest.approx(17.0) and cp.diam_labels == pytest.approx(12.5)
    with pytest.raises(FileExistsError, match="exported"):
        M.export_cellpose_weights(ours, path)


@pytest.mark.reference
def test_cellpose_reference_model_runs_narrow_weights(tmp_path):
    _reference("cellpose.models")
    ours = _small_model(M.ModelConfig(features=(8, 16, 32), diam_mean=17.0), seed=4).eval()
    ours.record = ours.record.replace(diam_labels=11.0)
    cp = M.cellpose_reference_model(M.export_cellpose_weights(ours, tmp_path / "narrow"),
                                    mkldnn=False)
    assert cp.diam_mean == pytest.approx(17.0) and cp.diam_labels == pytest.approx(11.0)
    x = torch.randn(2, 2, 48, 48)
    with torch.no_grad():
        y_ref, style_ref = cp.net(x)
        y, style = ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=0)
    assert style_ref.shape == (2, M.CELLPOSE_STYLE_WIDTH)  # padded for cellpose's run_net
    torch.testing.assert_close(style_ref[:, :32], style, atol=1e-6, rtol=0)
    assert not style_ref[:, 32:].any()


def test_cellpose_file_round_trip_keeps_diameters(tmp_path):
    net = _small_model(M.ModelConfig(features=(8, 16), diam_mean=17.0))
    net.record = net.record.replace(diam_labels=14.0)
    back = M.load_cellpose_weights(M.export_cellpose_weights(net, tmp_path / "w"))
    assert back.config == net.config and back.record.diam_labels == 14.0
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], net(x)[0])


# --- our folder format --------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    net = _small_model()
    record = {"epochs": 3, "loss": [1.0, 0.5, 0.25]}
    net.record = net.record.replace(diam_labels=21.5, training=record, thresholds={"flow": 0.4})
    M.save(net, tmp_path / "m")
    back = M.load(tmp_path / "m", device="cpu")
    assert not back.training and back.config == net.config and back.record.diam_labels == 21.5
    assert back.record.training == record and back.record.thresholds == {"flow": 0.4}
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), atol=0, rtol=0)
    meta = json.loads((tmp_path / "m" / M.CONFIG_FILE).read_text())
    assert meta["format_version"] == M.FORMAT_VERSION


def test_save_float16_storage(tmp_path):
    net = _small_model()
    M.save(net, tmp_path / "half", dtype="float16")
    M.save(net, tmp_path / "full")
    half = tmp_path / "half" / M.WEIGHTS_FILE
    assert half.stat().st_size < 0.6 * (tmp_path / "full" / M.WEIGHTS_FILE).stat().st_size
    with pytest.raises(ValueError, match="'float9'"):
        M.save(net, tmp_path / "bad", dtype="float9")
    back = M.load(tmp_path / "half")
    assert back.head.conv.weight.dtype == torch.float32
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], net(x)[0], atol=2e-2, rtol=2e-2)


def test_save_refuses_to_overwrite(tmp_path):
    net = _small_model()
    net.record = net.record.replace(thresholds={"cellprob": 0.0})
    M.save(net, tmp_path)
    net.record = net.record.replace(thresholds=None)
    with pytest.raises(FileExistsError, match=re.escape(M.WEIGHTS_FILE)):
        M.save(net, tmp_path)
    M.save(net, tmp_path, overwrite=True)
    assert M.load(tmp_path).record.thresholds is None  # the stale thresholds.json was removed


def test_the_record_is_saved_and_loaded_one_file_per_field(tmp_path):
    net = _small_model()
    assert net.record == M.ModelRecord(diam_labels=net.config.diam_mean)
    width = SMALL.features[-1]  # one coefficient per style value
    size_model = {"coef": [0.5] * width, "style_mean": [0.25] * width, "target_mean": 0.0,
                  "diam_mean": 30.0}
    net.record = net.record.replace(
        diam_labels=21.5, thresholds={"flow_threshold": 0.6}, training={"epochs": 3},
        size_model=types.SimpleNamespace(to_dict=lambda: size_model),  # stored as its dict
        input_recipe={"channels": ["gray", None], "invert": "auto"})
    M.save(net, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {M.WEIGHTS_FILE, M.CONFIG_FILE,
                                                     *M.RECORD_FILES.values()}
    assert json.loads((tmp_path / M.SIZE_MODEL_FILE).read_text()) == size_model
    back = M.load(tmp_path)
    assert back.record == net.record
    assert back.record.training == {"epochs": 3} and back.record.size_model == size_model
    # the record is the one place of the metadata: no attributes beside it
    assert not any(hasattr(back, name) for name in ("diam_labels", "thresholds",
                                                     "training_record", "size_model"))
    back.record = back.record.replace(thresholds=None)
    assert back.record.thresholds is None and net.record.thresholds is not None
    M.save(back, tmp_path, overwrite=True)
    assert not (tmp_path / M.THRESHOLDS_FILE).exists()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        M.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        M.load(tmp_path / "empty")

    M.save(_small_model(), tmp_path / "corrupt")
    (tmp_path / "corrupt" / M.WEIGHTS_FILE).write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="not a readable model weights file"):
        M.load(tmp_path / "corrupt")


def test_load_weights_of_another_width_names_key_and_shapes(tmp_path):
    narrow = M.CellposeUNet(M.ModelConfig(features=(16, 32, 64, 128)))
    M.save(narrow, tmp_path)
    meta = json.loads((tmp_path / M.CONFIG_FILE).read_text())
    meta["config"] = M.ModelConfig().to_dict()  # config says default width, weights disagree
    (tmp_path / M.CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"encoder\.0\..* has shape \(16.*expects \(32"):
        M.load(tmp_path)


def test_load_torch_state_dict_weights(tmp_path):
    net = _small_model()
    M.save(net, tmp_path)
    (tmp_path / M.WEIGHTS_FILE).unlink()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    back = M.load(tmp_path)
    torch.testing.assert_close(back.head.conv.weight, net.head.conv.weight)


def test_load_pretrained_missing_lists_available():
    with pytest.raises(FileNotFoundError, match="no pretrained model 'no-such-model'.*available"):
        M.load_pretrained("no-such-model")


# --- downloading Cellpose weights ---------------------------------------------------
@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Empty cellpose_nb and cellpose model folders, whatever this machine holds."""
    monkeypatch.setenv("CELLPOSE_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cellpose"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "cache"


def _cellpose_file_bytes(net: M.CellposeUNet) -> bytes:
    buffer = io.BytesIO()
    torch.save(M.to_cellpose_state_dict(net), buffer)
    return buffer.getvalue()


def test_download_by_name_mocked(isolated_cache, monkeypatch):
    net = _small_model(M.ModelConfig(features=(8, 16), diam_mean=17.0))
    payload = _cellpose_file_bytes(net)
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    model = M.load_cellpose_weights("cyto3")
    assert urls == ["https://www.cellpose.org/models/cyto3"]
    assert (isolated_cache / "cyto3").read_bytes() == payload
    assert model.config.diam_mean == 30.0  # Cellpose's built-in value for cyto3
    assert model.record.diam_labels == 17.0  # from the file
    torch.testing.assert_close(model.head.conv.weight, net.head.conv.weight)
    M.load_cellpose_weights("cyto3")  # second time from the cache
    assert len(urls) == 1


def test_download_checksum(isolated_cache, monkeypatch):
    import hashlib

    payload = _cellpose_file_bytes(_small_model(M.ModelConfig(features=(8, 16))))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    monkeypatch.setitem(M.KNOWN_SHA256, "nucleitorch_0", "0" * 64)
    with pytest.raises(ValueError, match="checksum mismatch"):
        M.load_cellpose_weights("nuclei")
    assert not any(isolated_cache.iterdir())
    monkeypatch.setitem(M.KNOWN_SHA256, "nucleitorch_0", hashlib.sha256(payload).hexdigest())
    assert M.load_cellpose_weights("nuclei").config.diam_mean == 17.0


def test_download_offline_error(isolated_cache, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    target = isolated_cache / "cyto2torch_0"
    pattern = (f"{re.escape('https://www.cellpose.org/models/cyto2torch_0')}.*"
               f"{re.escape(str(target))}.*needs network access")
    with pytest.raises(ConnectionError, match=pattern):
        M.load_cellpose_weights("cyto2")
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_load_cellpose_weights_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="cyto3"):
        M.load_cellpose_weights(tmp_path / "missing")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other")
    with pytest.raises(ValueError, match="not a Cellpose CPnet state dict"):
        M.load_cellpose_weights(tmp_path / "other")
    (tmp_path / "junk").write_bytes(os.urandom(128))
    with pytest.raises(ValueError, match="not a readable model weights file"):
        M.load_cellpose_weights(tmp_path / "junk")


def test_download_writes_a_digest_that_catches_later_corruption(isolated_cache, monkeypatch):
    import hashlib

    payload = _cellpose_file_bytes(_small_model(M.ModelConfig(features=(8, 16))))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    M.load_cellpose_weights("cyto2")
    cached = isolated_cache / "cyto2torch_0"
    sidecar = isolated_cache / "cyto2torch_0.sha256"
    assert sidecar.read_text().split() == [hashlib.sha256(payload).hexdigest(), "cyto2torch_0"]
    cached.write_bytes(payload[: len(payload) // 2])  # a truncated copy
    with pytest.raises(ValueError, match=r"cyto2torch_0 does not match cyto2torch_0\.sha256.*Delete it"):
        M.load_cellpose_weights("cyto2")
    assert cached.exists() and sidecar.exists()  # nothing deleted behind the user's back
    cached.unlink()
    sidecar.unlink()
    assert M.load_cellpose_weights("cyto2").config.diam_mean == 30.0  # downloaded again


def test_a_copied_file_without_digest_is_accepted_and_a_known_digest_is_checked(isolated_cache, monkeypatch):
    payload = _cellpose_file_bytes(_small_model(M.ModelConfig(features=(8, 16))))
    isolated_cache.mkdir(parents=True)
    (isolated_cache / "cyto3").write_bytes(payload)  # copied by hand: no sidecar
    assert M.load_cellpose_weights("cyto3").config.diam_mean == 30.0
    monkeypatch.setitem(M.KNOWN_SHA256, "cyto3", "f" * 64)
    with pytest.raises(ValueError, match="published digest"):
        M.load_cellpose_weights("cyto3")


def test_forward_feeds_every_convolution_channels_last_on_the_cpu():
    """model.fast_layout is applied inside forward, so callers get the fast layout for free."""
    net = _small_model(M.ModelConfig(features=(8, 16))).eval()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
        for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    x = torch.rand(2, 2, 16, 16)
    assert x.is_contiguous()  # an ordinary NCHW input
    with torch.no_grad():
        y, _ = net(x)
    for h in hooks:
        h.remove()
    assert len(seen) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) and all(seen)
    with torch.no_grad():
        torch.testing.assert_close(y, net(x.contiguous(memory_format=torch.channels_last))[0])
