"""BioImage Model Zoo packages: export, bioimage.io's own test, round trip, hostile packages."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import pickle
import stat
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core")
import ruyaml

from cellpose_nb.bioimageio import (
    FILES,
    export_bioimageio,
    load_bioimageio,
    package_files,
)
from cellpose_nb.bioimageio._architecture import CellposeNbUNet
from cellpose_nb.bioimageio.export import package_network
from cellpose_nb.data import load_sample
from cellpose_nb.model import CellposeUNet, ModelConfig, load_pretrained
from cellpose_nb.predict import segment

TINY = ModelConfig(features=(8, 16))


@pytest.fixture(scope="module")
def nuclei_zip(tmp_path_factory):
    torch.set_num_threads(1)
    return export_bioimageio(load_pretrained("nuclei", device="cpu"),
                             tmp_path_factory.mktemp("pkg") / "nuclei.zip", name="nuclei")


def _rdf(path):
    with zipfile.ZipFile(path) as z:
        return ruyaml.YAML(typ="safe", pure=True).load(z.read("rdf.yaml"))


def _rewrite(src, dst, *, replace=(), rdf=None, extra=()):
    """A copy of package ``src`` with members replaced ({name: bytes}), an rdf edited by
    ``rdf(dict)``, and ``extra`` ZipInfo/bytes pairs appended."""
    replace = dict(replace)
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members.update(replace)
    if rdf is not None:
        content = ruyaml.YAML(typ="safe", pure=True).load(members["rdf.yaml"])
        rdf(content)
        buf = io.StringIO()
        ruyaml.YAML(typ="safe", pure=True).dump(content, buf)
        members["rdf.yaml"] = buf.getvalue().encode()
    with zipfile.ZipFile(dst, "w") as z:  # stored: quick to write
        for name, data in members.items():
            z.writestr(name, data)
        for info, data in extra:
            z.writestr(info, data)
    return dst


def _set_weights_sha(content, data):
    content["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(data).hexdigest()


# --- the package ----------------------------------------------------------------------
def test_package_holds_what_the_spec_and_the_issue_ask(nuclei_zip):
    with zipfile.ZipFile(nuclei_zip) as z:
        names = set(z.namelist())
        masks = np.load(io.BytesIO(z.read(FILES["test_masks"])))
        flows = np.load(io.BytesIO(z.read(FILES["test_flows"])))
        doc = z.read(FILES["documentation"]).decode()
    assert {"rdf.yaml", "cellpose_nb_unet.py", *FILES.values()} <= names
    rdf = _rdf(nuclei_zip)
    assert rdf["format_version"].startswith("0.5")
    assert {"10.1038/s41592-020-01018-x"} <= {c.get("doi") for c in rdf["cite"]}
    assert rdf["training_data"]["license"] == "CC0-1.0" and rdf["license"]
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    pre = [p["id"] for p in rdf["inputs"][0]["preprocessing"]]
    assert "scale_range" in pre
    post = rdf["outputs"][0]["postprocessing"][0]
    tuned = load_pretrained("nuclei").record.thresholds
    assert post["id"] == "cellpose_flow_dynamics"
    assert post["kwargs"]["cellprob_threshold"] == tuned["cellprob_threshold"]
    assert post["kwargs"]["flow_threshold"] == tuned["flow_threshold"]
    assert rdf["config"]["cellpose_nb"]["expected_diameter_px"] == 17.0
    assert masks.dtype == np.uint16 and masks.shape[:2] == (1, 1) and masks.max() > 5
    assert flows.shape == (1, 3, *masks.shape[2:])
    assert "17 px" in doc and "## Validation" in doc


_RUN_TESTS = """
import json, sys, warnings
from bioimageio.core import test_model
out = {}
for path, weights in json.loads(sys.argv[1]):
    out[path] = test_model(path, weight_format=weights).model_dump(mode="json")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bioimageio_results(nuclei_zip, tmp_path_factory, cellpose_ref):
    """bioimage.io's own test (``bioimageio.core.test_model``, what ``bioimageio test`` runs)
    on the nuclei package (both weight formats) and on a two-channel cyto_cil package
    (state dict), in one fresh interpreter: {name: summary}."""
    cyto = export_bioimageio(load_pretrained("cyto_cil", device="cpu"),
                             tmp_path_factory.mktemp("cyto") / "cyto.zip")
    jobs = [[str(nuclei_zip), None], [str(cyto), "pytorch_state_dict"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _RUN_TESTS, json.dumps(jobs)],
                          check=False, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {"nuclei": results[str(nuclei_zip)], "cyto": results[str(cyto)], "cyto_zip": cyto}


def _failed(summary):
    return [(d["name"], [e["msg"] for e in d.get("errors", [])])
            for d in summary["details"] if d["status"] == "failed"]


def test_bioimageio_own_test_passes(bioimageio_results):
    """Both weight formats reproduce the test outputs, the masks from bioimage.io's
    Cellpose post-processing step included, and run at several sizes and batch sizes."""
    summary = bioimageio_results["nuclei"]
    assert summary["status"] == "passed", _failed(summary)
    passed = " ".join(d["name"] for d in summary["details"] if d["status"] == "passed")
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in passed
        assert f"Run {weights} inference for inputs with batch_size: 2" in passed


def test_two_channel_model_passes_bioimageio_test(bioimageio_results):
    summary, package = bioimageio_results["cyto"], bioimageio_results["cyto_zip"]
    assert summary["status"] == "passed", _failed(summary)
    assert _rdf(package)["training_data"]["license"] == "CC-BY-3.0"
    assert len(_rdf(package)["inputs"][0]["axes"][1]["channel_names"]) == 2


# --- round trip -----------------------------------------------------------------------
def test_round_trip_gives_identical_outputs_and_masks(nuclei_zip):
    original = load_pretrained("nuclei", device="cpu")
    loaded = load_bioimageio(nuclei_zip, device="cpu")
    x = torch.rand(2, 2, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(original(x)[0], loaded(x)[0])
    assert loaded.config == original.config
    for field in ("diam_labels", "input_recipe", "size_model"):
        assert getattr(loaded.record, field) == getattr(original.record, field), field
    for key in ("cellprob_threshold", "flow_threshold"):
        assert loaded.record.thresholds[key] == original.record.thresholds[key]
    image = load_sample("fluorescence").image
    ours, theirs = segment(image, original), segment(image, loaded)
    assert ours.labels.max() > 5 and np.array_equal(ours.labels, theirs.labels)
    assert ours.diameter == theirs.diameter  # the size model came back too


def test_architecture_source_is_the_network():
    """The torch-only file shipped in the package has CellposeUNet's names, shapes and outputs."""
    torch.manual_seed(0)
    net = CellposeUNet(TINY).eval()
    shipped = package_network(net, n_in=1)
    assert {k: v.shape for k, v in shipped.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        masks_in, flows = shipped(x)
        assert torch.equal(masks_in, flows)
        # CellposeUNet runs channels-last (model.fast_layout): other kernels, the same sums
        torch.testing.assert_close(flows, net(torch.cat([x, torch.zeros_like(x)], 1))[0],
                                   atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="n_inputs"):
        CellposeNbUNet(n_channels=2, features=(8,), n_inputs=3)


def test_reads_a_cellpose_package(tmp_path):
    """A package written with cellpose's own exporter (cellpose.export), CPnet weights."""
    resnet = pytest.importorskip("cellpose.resnet_torch")
    cp_export = pytest.importorskip("cellpose.export")
    torch.manual_seed(0)
    kwargs = {"nbase": [2, 8, 16], "nout": 3, "sz": 3, "mkldnn": False, "conv_3D": False,
              "max_pool": True}
    cpnet = resnet.CPnetBioImageIO(**kwargs).eval()
    for module in cpnet.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        outs = cpnet(x)
    files = {n: tmp_path / f"{n}.npy" for n in ("input", "flow", "style", "d0", "d1")}
    np.save(files["input"], x.numpy())
    np.save(files["flow"], outs[0].numpy())
    np.save(files["style"], outs[1].numpy())
    for i in range(2):
        np.save(tmp_path / f"test_downsampled_{i}.npy", outs[2 + i].numpy())
    torch.save(cpnet.state_dict(), tmp_path / "cp.pth")
    (tmp_path / "README.md").write_text("# cp\n## Validation\nnone\n")
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "cover.png", np.zeros((16, 32, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace
        torch.jit.trace(cpnet, x).save(str(tmp_path / "cp_traced.pt"))
    with warnings.catch_warnings():  # bioimageio.spec leaves validated files to the collector
        warnings.simplefilter("ignore", ResourceWarning)
        package = _cellpose_package(cp_export, tmp_path, files, kwargs)
        gc.collect()
    model = load_bioimageio(package, device="cpu")
    assert model.config.features == (8, 16) and model.record.input_recipe["channels"] == [0, 1]
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], outs[0], atol=1e-5, rtol=1e-5)


def _cellpose_package(cp_export, tmp_path, files, kwargs):
    """A package laid out as cellpose.export writes it: its own input, output and
    architecture descriptions, CPnet state dict and traced weights."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    version = v0_5.Version(torch.__version__.split("+")[0])
    descr = v0_5.ModelDescr(
        name="tiny cellpose", description="a Cellpose package for the test",
        authors=[v0_5.Author(name="A")],
        cite=[v0_5.CiteEntry(text="Cellpose", doi="10.1038/s41592-020-01018-x")],
        covers=[v0_5.FileDescr(source=tmp_path / "cover.png")],
        documentation=v0_5.FileDescr(source=tmp_path / "README.md"), license="MIT",
        inputs=[cp_export.descr_gen_input(files["input"])],
        outputs=[cp_export.descr_gen_output_flow(files["flow"]),
                 cp_export.descr_gen_output_style(files["style"], 16),
                 *cp_export.descr_gen_output_downsampled(tmp_path, nbase=[8, 16])],
        weights=v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=tmp_path / "cp.pth", pytorch_version=version,
                architecture=cp_export.descr_gen_arch(kwargs)),
            torchscript=v0_5.TorchscriptWeightsDescr(
                source=tmp_path / "cp_traced.pt", pytorch_version=version,
                parent="pytorch_state_dict")))
    return save_bioimageio_package(descr, output_path=tmp_path / "cellpose.zip")


# --- refusals -------------------------------------------------------------------------
def _member(name, mode=0o644):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


@pytest.mark.parametrize("name, mode, match", [
    ("../evil.txt", 0o644, "unsafe file name"),
    ("/etc/evil.txt", 0o644, "unsafe file name"),
    ("sub\\..\\..\\evil.txt", 0o644, "unsafe file name"),
    ("link", stat.S_IFLNK | 0o777, "symbolic link"),
])
def test_refuses_unsafe_zip_members(nuclei_zip, tmp_path, name, mode, match):
    bad = _rewrite(nuclei_zip, tmp_path / "bad.zip", extra=[(_member(name, mode), b"x")])
    with pytest.raises(ValueError, match=match) as err:
        load_bioimageio(bad)
    assert "bad.zip" in str(err.value)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_refuses_a_zip_that_decompresses_too_large(nuclei_zip, tmp_path, monkeypatch):
    bomb = _rewrite(nuclei_zip, tmp_path / "bomb.zip")
    before = bomb.stat().st_size
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", bytes(4 * 1024 ** 2))  # 4 MiB of zeros: a few KiB zipped
    assert bomb.stat().st_size < before + 100_000
    size = sum(i.file_size for i in zipfile.ZipFile(bomb).infolist())
    monkeypatch.setattr(package_files, "MAX_TOTAL_BYTES", size - 1)
    with pytest.raises(ValueError, match="decompress to"):
        load_bioimageio(bomb)


def test_refuses_corrupt_and_foreign_files(nuclei_zip, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(nuclei_zip.read_bytes()[: nuclei_zip.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.zip"):
        load_bioimageio(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="neither a zip file nor an rdf.yaml"):
        load_bioimageio(text)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bioimageio(tmp_path / "missing.zip")
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(FileNotFoundError, match="no rdf.yaml"):
        load_bioimageio(empty)


def test_refuses_an_invalid_description(nuclei_zip, tmp_path):
    def break_axes(rdf):
        rdf["inputs"][0]["axes"][0]["type"] = "bogus"

    bad = _rewrite(nuclei_zip, tmp_path / "bad.zip", rdf=break_axes)
    with pytest.raises(ValueError, match="not a valid bioimage.io model description.*bogus"):
        load_bioimageio(bad)


def test_refuses_weights_that_do_not_match_their_checksum(nuclei_zip, tmp_path):
    with zipfile.ZipFile(nuclei_zip) as z:
        data = bytearray(z.read(FILES["state_dict"]))
    data[-100] ^= 0xFF
    bad = _rewrite(nuclei_zip, tmp_path / "bad.zip", replace={FILES["state_dict"]: bytes(data)})
    with pytest.raises(ValueError, match="SHA-256"):
        load_bioimageio(bad)


class _Hostile:
    """Unpickling this would create a file: what a hostile weights file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_never_unpickles_code(nuclei_zip, tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"w": _Hostile(marker)})
    bad = _rewrite(nuclei_zip, tmp_path / "bad.zip", replace={FILES["state_dict"]: data},
                   rdf=lambda r: _set_weights_sha(r, data))
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_bioimageio(bad)
    assert not marker.exists()


def test_refuses_weights_of_another_network(nuclei_zip, tmp_path):
    buf = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(3, 3)}, buf)
    data = buf.getvalue()
    bad = _rewrite(nuclei_zip, tmp_path / "bad.zip", replace={FILES["state_dict"]: data},
                   rdf=lambda r: _set_weights_sha(r, data))
    with pytest.raises(ValueError, match=r"bad.zip:weights.pt: keys do not match"):
        load_bioimageio(bad)

    def foreign(rdf):  # no config.cellpose_nb and no CPnet names: someone else's network
        _set_weights_sha(rdf, data)
        del rdf["config"]["cellpose_nb"]

    other = _rewrite(nuclei_zip, tmp_path / "other.zip", replace={FILES["state_dict"]: data},
                     rdf=foreign)
    with pytest.raises(ValueError, match="weights.pt: not a Cellpose-style network"):
        load_bioimageio(other)


def test_refuses_torchscript_only_and_remote_weights(nuclei_zip, tmp_path):
    def torchscript_only(rdf):
        del rdf["weights"]["pytorch_state_dict"]
        del rdf["weights"]["torchscript"]["parent"]

    bad = _rewrite(nuclei_zip, tmp_path / "ts.zip", rdf=torchscript_only)
    with pytest.raises(ValueError, match="no pytorch_state_dict weights"):
        load_bioimageio(bad)

    def remote(rdf):
        rdf["weights"]["pytorch_state_dict"]["source"] = "https://example.org/weights.pt"

    bad = _rewrite(nuclei_zip, tmp_path / "remote.zip", rdf=remote)
    with pytest.raises(ValueError, match="downloads nothing"):
        load_bioimageio(bad)


# --- export: bad input and existing files ----------------------------------------------
def test_export_refuses_to_overwrite(nuclei_zip, tmp_path):
    target = tmp_path / "mine.zip"
    target.write_bytes(b"the user's file")
    model = load_pretrained("nuclei", device="cpu")
    with pytest.raises(FileExistsError, match="mine.zip exists"):
        export_bioimageio(model, target)
    assert target.read_bytes() == b"the user's file"
    with pytest.raises(ValueError, match=r"\.zip"):
        export_bioimageio(model, tmp_path / "model.yaml")
    with pytest.raises(TypeError, match="CellposeUNet"):
        export_bioimageio(object(), tmp_path / "x.zip")
    export_bioimageio(model, target, overwrite=True)
    assert zipfile.is_zipfile(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.zip"]  # no temporaries left


def test_export_refuses_a_model_that_finds_no_cells(tmp_path):
    torch.manual_seed(0)
    tiny = CellposeUNet(TINY).eval()
    with pytest.raises(ValueError, match="finds no cells in the test image"):
        export_bioimageio(tiny, tmp_path / "tiny.zip")
    with pytest.raises(ValueError, match=r"finds no cells in the test image \(shape \(64, 50\)"):
        export_bioimageio(tiny, tmp_path / "tiny.zip", test_image=np.zeros((64, 51, 3)),
                          channel_axis=-1)
    with pytest.raises(ValueError, match="side of 1 px; it needs at least 2"):
        export_bioimageio(tiny, tmp_path / "tiny.zip", test_image=np.zeros((1, 50)))
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path, capsys):
    from cellpose_nb.cli import main

    out = tmp_path / "nuclei.zip"
    assert main(["export-bioimageio", "nuclei", str(out), "--authors", "Ada Lovelace"]) == 0
    assert _rdf(out)["authors"] == [{"name": "Ada Lovelace"}] and _rdf(out)["name"] == "nuclei"
    before = out.read_bytes()
    assert main(["export-bioimageio", "nuclei", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["export-bioimageio", str(tmp_path / "no_model"), str(tmp_path / "b.zip")]) == 2


def test_reads_an_unpacked_package_but_no_link_out_of_it(nuclei_zip, tmp_path):
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(nuclei_zip) as z:
        z.extractall(folder)
    x = torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = load_bioimageio(nuclei_zip, device="cpu")(x)[0]
        for source in (folder, folder / "rdf.yaml"):
            assert torch.equal(load_bioimageio(source, device="cpu")(x)[0], expected)
    outside = tmp_path / "outside.pt"
    (folder / FILES["state_dict"]).rename(outside)
    (folder / FILES["state_dict"]).symlink_to(outside)
    with pytest.raises(ValueError, match="points outside the package folder"):
        load_bioimageio(folder)
