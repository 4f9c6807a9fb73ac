"""Write a model as a BioImage Model Zoo package (spec 0.5): :func:`export_bioimageio`.

The package (one zip) holds ``rdf.yaml``, the weights twice (``pytorch_state_dict``
with its architecture source, and ``torchscript``), a test input with the two test
outputs, a cover image and a documentation page.  Its input is the raw channels
the model reads; pre-processing is bioimage.io's ``scale_range`` (1st -> 0, 99th
-> 1 per channel); its outputs are ``masks``, labels from bioimage.io's
``cellpose_flow_dynamics`` post-processing step with the model's tuned
thresholds, and ``flows``, the raw network output.  The rdf's ``config.cellpose_nb``
entry holds what :func:`~cellpose_nb.bioimageio.load_bioimageio` needs to give the
model back with its record.  The description is built from ``bioimageio.spec``
classes and written by ``bioimageio.spec.save_bioimageio_package``.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from cellpose_nb.atomic import write_file
from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.masks import (
    MIN_SIZE,
    N_ITER,
    compute_masks,
)
from cellpose_nb.model import CellposeUNet, count_parameters
from cellpose_nb.model.record import check_field
from cellpose_nb.predict.config import model_thresholds

from . import contents
from ._architecture import CellposeNbUNet
from ._extra import require

FORMAT_NAME = "cellpose_nb.bioimageio"  # config.cellpose_nb.format
FORMAT_VERSION = 1  # bump when config.cellpose_nb changes meaning
INPUT_ID, MASKS_ID, FLOWS_ID = "input", "masks", "flows"  # tensor ids of the package
ARCHITECTURE_FILE = "cellpose_nb_unet.py"  # the architecture source, as named in the package
ARCHITECTURE_CALLABLE = "CellposeNbUNet"
FILES = {"state_dict": "weights.pt", "torchscript": "weights_torchscript.pt",
         "test_input": "test_input.npy", "test_masks": "test_masks.npy",
         "test_flows": "test_flows.npy", "cover": "cover.png", "documentation": "README.md"}
DEFAULT_NAME = "cellpose_nb model"
DEFAULT_AUTHORS = ("cellpose_nb contributors",)  # pass your own: they are the package's contacts
DEFAULT_LICENSE = "BSD-3-Clause"  # cellpose_nb's licence; the weights are yours to license
DEFAULT_TAGS = ("cellpose", "cellpose_nb", "instance-segmentation", "2d", "pytorch", "unet")
MASKS_DTYPE = "uint16"  # up to 65535 cells per image
CITATIONS = (
    {"text": "Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist "
             "algorithm for cellular segmentation. Nature Methods 18, 100-106 (2021).",
     "doi": "10.1038/s41592-020-01018-x"},
    {"text": "cellpose_nb: a Jupyter-first toolkit that teaches and does cell segmentation the "
             "Cellpose way (an independent re-implementation, not affiliated with the Cellpose "
             "authors).", "url": "https://www.cellpose.org"},
)
# training data a model's training record may name (a folder under $CELLPOSE_NB_DATA)
KNOWN_DATASETS = {
    "dsb2018": {
        "name": "DSB2018 nuclei (BBBC038v1)",
        "description": "Kaggle 2018 Data Science Bowl, stage 1 training set: nuclei in "
                       "fluorescence, histology and brightfield images. Caicedo et al., Nature "
                       "Methods 16, 1247-1253 (2019).",
        "license": "CC0-1.0", "doi": "10.1038/s41592-019-0612-7",
        "source": "https://bbbc.broadinstitute.org/BBBC038"},
    "cil_mp6843": {
        "name": "CIL MP6843 whole cells",
        "description": "Cell Image Library CIL/CCDB:6843, MP6843 cells, phalloidin (cytoplasm) "
                       "and DAPI (nuclei), 100 fields; the Cellpose paper's specialist data.",
        "license": "CC-BY-3.0", "doi": "10.7295/W9CCDB6843",
        "source": "https://doi.org/10.7295/W9CCDB6843"},
}


def training_data_of(model) -> dict | None:
    """The entry of :data:`KNOWN_DATASETS` that the model's training command names, if any.

    Examples
    --------
    >>> from cellpose_nb.model import ModelConfig
    >>> net = CellposeUNet(ModelConfig(features=(8, 16)))
    >>> net.record = net.record.replace(training={"command": ["train", "/data/dsb2018/train"]})
    >>> training_data_of(net)["license"], training_data_of(CellposeUNet(ModelConfig(features=(8,))))
    ('CC0-1.0', None)
    """
    training = model.record.training or {}
    words = " ".join(str(w) for w in training.get("command") or [])
    return next((d for key, d in KNOWN_DATASETS.items() if key in words), None)


def _scalars(d) -> dict | None:
    """The finite number entries of a dict (a thresholds search also stores its grid)."""
    if d is None:
        return None
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def cellpose_nb_config(model) -> dict:
    """The rdf's ``config.cellpose_nb`` entry: the architecture and the record.

    Examples
    --------
    >>> from cellpose_nb.model import ModelConfig
    >>> cfg = cellpose_nb_config(CellposeUNet(ModelConfig(features=(8, 16), diam_mean=17)))
    >>> cfg["model_config"]["features"], cfg["expected_diameter_px"], cfg["thresholds"]
    ([8, 16], 17.0, None)
    """
    record = model.record
    for field in ("input_recipe", "thresholds", "size_model", "diam_labels"):
        try:
            check_field(field, getattr(record, field))
        except ValueError as err:  # never write what load_bioimageio would refuse
            raise ValueError(f"cannot export: model.record.{field}: {err}") from None
    training = record.training or {}
    summary = {k: training[k] for k in ("command", "data_hash", "n_train", "n_val",
                                         "epochs_done", "finished_at") if k in training}
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "model_config": model.config.to_dict(),
            "expected_diameter_px": float(model.config.diam_mean),
            "diam_labels": float(record.diam_labels if record.diam_labels is not None
                                 else model.config.diam_mean),
            "input_recipe": record.input_recipe, "thresholds": _scalars(record.thresholds),
            "size_model": record.size_model, "training": summary or None,
            "n_iter": N_ITER, "min_size": MIN_SIZE}


def package_network(model: CellposeUNet, n_in: int) -> CellposeNbUNet:
    """The package's network (``_architecture.CellposeNbUNet``) with ``model``'s weights, on the CPU."""
    cfg = model.config
    net = CellposeNbUNet(n_channels=cfg.n_channels, features=cfg.features, n_out=cfg.n_out,
                         kernel_size=cfg.kernel_size, n_inputs=n_in)
    net.load_state_dict({k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else
                         v.detach().cpu() for k, v in model.state_dict().items()})
    return net.eval()


def _torchscript(net, x) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        # the torchscript weight format of the spec is what deepImageJ and QuPath run;
        # torch deprecates torch.jit but still writes it
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated",
                                category=DeprecationWarning)
        return torch.jit.trace(net, x)


def _save_torchscript(module, path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated",
                                category=DeprecationWarning)
        torch.jit.save(module, str(path))


def export_bioimageio(model: CellposeUNet, path: str | os.PathLike, *, name: str = DEFAULT_NAME,
                      description: str | None = None, authors=DEFAULT_AUTHORS,
                      license: str = DEFAULT_LICENSE, tags=(), training_data: dict | None = None,
                      test_image=None, channel_axis=None, overwrite: bool = False) -> Path:
    """Write ``model`` as a bioimage.io model package (spec 0.5 zip).

    Parameters
    ----------
    model : CellposeUNet
    path : path
        The zip file to write (``.zip``).
    name, description : str
        The package's name and one-line description.
    authors : sequence of str
        The package's authors (its contacts on bioimage.io).
    license : str
        SPDX identifier of the weights' licence.
    tags : sequence of str
        Added to :data:`DEFAULT_TAGS`.
    training_data : dict, optional
        ``{"name", "description", "license", "doi" or "source"}``; default: the
        data set the model's training record names (:data:`KNOWN_DATASETS`), if any.
    test_image : ndarray (H, W) or (H, W, C), optional
        The test image, with cells about ``diam_mean`` px wide; cropped to at most
        :data:`~cellpose_nb.bioimageio.contents.TEST_SIZE` px per side.  Default: a
        bundled sample zoomed to the model's scale.
    channel_axis : int, optional
        Channel axis of ``test_image``.
    overwrite : bool
        Replace an existing ``path``; without it FileExistsError, and nothing is written.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, zipfile
    >>> from cellpose_nb.model import load_pretrained
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = export_bioimageio(load_pretrained("nuclei", device="cpu"), f"{tmp}/nuclei.zip")
    ...     with zipfile.ZipFile(out) as z:
    ...         print(sorted(z.namelist())[:4])
    ['README.md', 'cellpose_nb_unet.py', 'cover.png', 'rdf.yaml']
    """
    path = Path(path)
    if not isinstance(model, CellposeUNet):
        raise TypeError(f"model must be a cellpose_nb CellposeUNet; got {type(model).__name__}")
    if path.suffix.lower() != ".zip":
        raise ValueError(f"{path}: a bioimage.io package is a .zip file; give a name ending in .zip")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'model.zip'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    authors = [authors] if isinstance(authors, str) else list(authors)
    if not authors or not all(isinstance(a, str) and a.strip() for a in authors):
        raise ValueError(f"authors must be a non-empty list of names; got {authors!r}")
    config = cellpose_nb_config(model)  # checks the record first
    v05 = require("bioimageio.spec.model.v0_5")
    spec = require("bioimageio.spec")

    recipe = model.record.input_recipe
    n_in = contents.n_inputs(recipe)
    multiple = model.config.size_multiple
    if test_image is None:
        raw = contents.sample_test_input(recipe, model.config.diam_mean, multiple)
    else:
        raw = contents.crop_to_multiple(
            contents.package_input(test_image, recipe, channel_axis=channel_axis), multiple)
    raw = raw[None].astype(np.float32)  # (1, C, H, W)
    invert = (recipe or {}).get("invert", False)
    x = contents.scale_range(raw)
    if invert is True:
        x[:, 0] = 1 - x[:, 0]
    net = package_network(model, n_in)
    with torch.no_grad():
        y = net(torch.from_numpy(x))[0].numpy()
    th = model_thresholds(model)
    masks = compute_masks(y[0, :2] / FLOW_SCALE, y[0, 2], **th, n_iter=N_ITER, min_size=MIN_SIZE)
    if not masks.any():  # bioimage.io refuses an all-zero test output, and rightly so
        raise ValueError(f"the model finds no cells in the test image (shape {raw.shape[2:]}, "
                         f"thresholds {th}), so the package's test would test nothing; pass a "
                         f"test_image with cells about {model.config.diam_mean:g} px wide that "
                         f"this model segments")
    data = training_data if training_data is not None else training_data_of(model)

    with tempfile.TemporaryDirectory(prefix="cellpose_nb_bioimageio_") as tmp:
        tmp = Path(tmp)
        files = {k: tmp / v for k, v in FILES.items()}
        shutil.copyfile(Path(__file__).with_name("_architecture.py"), tmp / ARCHITECTURE_FILE)
        torch.save(net.state_dict(), files["state_dict"])
        _save_torchscript(_torchscript(net, torch.from_numpy(x)), files["torchscript"])
        np.save(files["test_input"], raw)
        np.save(files["test_masks"], masks.astype(MASKS_DTYPE)[None, None])
        np.save(files["test_flows"], y.astype(np.float32))
        import imageio.v3 as iio

        iio.imwrite(files["cover"], contents.cover_image(np.clip(x[0, 0], 0, 1), masks))
        channel_names = _channel_names(recipe)
        files["documentation"].write_text(contents.documentation(
            name=name, diam_mean=model.config.diam_mean, channel_names=channel_names,
            invert=invert, thresholds=th, training_data=data,
            validation=_validation(model.record.thresholds), n_cells=int(masks.max())))
        with warnings.catch_warnings():
            # bioimageio.spec leaves the test tensor files it validates open for the
            # garbage collector; collect them here rather than warn in the user's session
            warnings.simplefilter("ignore", ResourceWarning)
            descr = _describe(v05, model, files, tmp, name=name, description=description,
                              authors=authors, license=license, tags=tags, data=data,
                              config=config, channel_names=channel_names, invert=invert,
                              thresholds=th, multiple=multiple)
            package = spec.save_bioimageio_package(descr, output_path=tmp / "package.zip")
            del descr
            gc.collect()
        write_file(path, lambda target: shutil.copyfile(package, target), overwrite=overwrite)
    return path


def _channel_names(recipe) -> list[str]:
    channels = (recipe or {}).get("channels", (0, None))
    first = "gray" if channels[0] == "gray" else "cytoplasm"
    return [first] if channels[1] is None else [first, "nuclei"]


def _validation(thresholds):
    t = thresholds or {}
    if isinstance(t.get("mean_ap"), (int, float)) and isinstance(t.get("iou_threshold"), (int, float)):
        return {"mean_ap": float(t["mean_ap"]), "iou_threshold": float(t["iou_threshold"])}
    return None


def _describe(v05, model, files, root, *, name, description, authors, license, tags, data,
              config, channel_names, invert, thresholds, multiple):
    """The ``ModelDescr`` of the package whose files are in ``root``."""
    from bioimageio.spec import ValidationContext

    size = v05.ParameterizedSize(min=-(-contents.MIN_INPUT_SIZE // multiple) * multiple,
                                 step=multiple)
    ref = lambda axis: v05.SizeReference(tensor_id=v05.TensorId(INPUT_ID),
                                         axis_id=v05.AxisId(axis))
    preprocessing = [
        v05.ScaleRangeDescr(kwargs=v05.ScaleRangeKwargs(
            axes=[v05.AxisId("y"), v05.AxisId("x")], min_percentile=contents.LOW_PERCENTILE,
            max_percentile=contents.HIGH_PERCENTILE, eps=contents.SCALE_RANGE_EPS))]
    if invert is True:  # 1 - x on the first channel
        n = len(channel_names)
        preprocessing.append(v05.ScaleLinearDescr(kwargs=v05.ScaleLinearAlongAxisKwargs(
            axis=v05.AxisId("channel"), gain=[-1.0] + [1.0] * (n - 1),
            offset=[1.0] + [0.0] * (n - 1))))
    inputs = [v05.InputTensorDescr(
        id=v05.TensorId(INPUT_ID),
        description=f"raw image, channels {' + '.join(channel_names)}; cells about "
                    f"{model.config.diam_mean:g} px in diameter",
        axes=[v05.BatchAxis(),
              v05.ChannelAxis(channel_names=[v05.Identifier(c) for c in channel_names]),
              v05.SpaceInputAxis(id=v05.AxisId("y"), size=size),
              v05.SpaceInputAxis(id=v05.AxisId("x"), size=size)],
        test_tensor=v05.FileDescr(source=files["test_input"]),
        data=v05.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=preprocessing)]
    spatial = [v05.SpaceOutputAxis(id=v05.AxisId(a), size=ref(a)) for a in ("y", "x")]
    outputs = [
        v05.OutputTensorDescr(
            id=v05.TensorId(MASKS_ID),
            description="instance labels: 0 background, 1..N cells (Cellpose flow dynamics)",
            axes=[v05.BatchAxis(), v05.ChannelAxis(channel_names=[v05.Identifier("labels")]),
                  *spatial],
            test_tensor=v05.FileDescr(source=files["test_masks"]),
            data=v05.IntervalOrRatioDataDescr(type=MASKS_DTYPE),
            postprocessing=[v05.CellposeFlowDynamicsDescr(kwargs=v05.CellposeFlowDynamicsKwargs(
                **thresholds, do_3D=False, min_size=MIN_SIZE, output_dtype=MASKS_DTYPE))]),
        v05.OutputTensorDescr(
            id=v05.TensorId(FLOWS_ID),
            description="raw network output: 5 x row flow, 5 x column flow, cellprob logit",
            axes=[v05.BatchAxis(),
                  v05.ChannelAxis(channel_names=[v05.Identifier(c) for c in
                                                 ("flow_row", "flow_col", "cellprob")]),
                  *spatial],
            test_tensor=v05.FileDescr(source=files["test_flows"]),
            data=v05.IntervalOrRatioDataDescr(type="float32"))]
    torch_version = v05.Version(torch.__version__.split("+")[0])
    arch_kwargs = {**dataclasses.asdict(model.config), "n_inputs": len(channel_names)}
    arch_kwargs.pop("diam_mean")
    arch_kwargs["features"] = list(arch_kwargs["features"])
    weights = v05.WeightsDescr(
        pytorch_state_dict=v05.PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=torch_version,
            architecture=v05.ArchitectureFromFileDescr(
                source=root / ARCHITECTURE_FILE, callable=v05.Identifier(ARCHITECTURE_CALLABLE),
                kwargs=arch_kwargs)),
        torchscript=v05.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=torch_version,
            parent="pytorch_state_dict"))
    dataset = None
    if data is not None:
        dataset = require("bioimageio.spec.dataset.v0_3").DatasetDescr(
            name=data["name"], description=data["description"], license=data["license"],
            cite=[{"text": data["name"], **({"doi": data["doi"]} if "doi" in data else
                                            {"url": data["source"]})}],
            source=data.get("source"))
    text = description or (f"Cellpose-style cell segmentation ({' + '.join(channel_names)}, "
                           f"cells about {model.config.diam_mean:g} px) exported by cellpose_nb")
    bioimageio_config = v05.BioimageioConfig(
        architecture_type="residual U-Net (Cellpose)", task="instance segmentation",
        model_parameter_count=count_parameters(model, trainable_only=False),
        target_structure=["nuclei"] if channel_names == ["gray"] else ["cells"])
    with ValidationContext(root=root, perform_io_checks=True):
        return v05.ModelDescr(
            name=name, description=text, authors=[v05.Author(name=a) for a in authors],
            cite=[v05.CiteEntry(**c) for c in CITATIONS], license=license,
            tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
            covers=[v05.FileDescr(source=files["cover"])],
            documentation=v05.FileDescr(source=files["documentation"]),
            inputs=inputs, outputs=outputs, weights=weights, training_data=dataset,
            config=v05.Config(bioimageio=bioimageio_config, cellpose_nb=config))
