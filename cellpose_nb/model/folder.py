"""The model folder: weights.safetensors, config.json and one JSON file per field of the record.

:func:`save` is the only writer of every file in a model folder, :func:`load`
its reader; :func:`load_pretrained` reads the folders shipped as package data.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from cellpose_nb.atomic import write_files

from .device import resolve_device
from .network import CellposeUNet, ModelConfig
from .record import ModelRecord, check_field, check_number

FORMAT_NAME = "cellpose_nb.model"  # written into config.json and the safetensors metadata
FORMAT_VERSION = 1  # bump when the folder layout or the parameter names change
WEIGHTS_FILE = "weights.safetensors"
TORCH_WEIGHTS_FILES = ("weights.pt", "weights.pth")  # also read by load(), never written
CONFIG_FILE = "config.json"  # architecture and record.diam_labels
TRAINING_FILE = "training.json"
THRESHOLDS_FILE = "thresholds.json"
INPUT_FILE = "input.json"  # how images become network input: {"channels": [...], "invert": ...}
SIZE_MODEL_FILE = "size_model.json"
# field of ModelRecord -> the file that holds it (diam_labels lives in config.json)
RECORD_FILES = {"training": TRAINING_FILE, "thresholds": THRESHOLDS_FILE,
                "input_recipe": INPUT_FILE, "size_model": SIZE_MODEL_FILE}
_PRETRAINED = importlib.resources.files("cellpose_nb") / "pretrained"  # package data: <name>/
PRETRAINED_DIR = Path(str(_PRETRAINED))  # as a Path: the real folder of a normal install
# every file save() may write; nothing else in a model folder is ours to replace or remove
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE, *RECORD_FILES.values())


def _reason(err: BaseException) -> str:
    """One line on why a file could not be read: the exception's type and first sentence
    (torch's unpickling errors are a page of advice before the reason)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0].split('. ')[0] if lines else 'no data'}"


# --- reading weights ------------------------------------------------------------------
def _load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source) -> None:
    """load_state_dict with errors that name the key, the source and both shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{source}: keys do not match the model; missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    for key in expected:  # in model order, so the first mismatch reported is the shallowest
        value = state_dict[key]
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)} but the model "
                             f"expects {tuple(expected[key].shape)}; the weights belong to "
                             f"another architecture than {getattr(model, 'config', '')}")
    model.load_state_dict(dict(state_dict))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict (weights_only) as {name: tensor}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load(path.read_bytes())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # each format has its own errors; all mean "not weights"
        raise ValueError(f"{path} is not a readable model weights file (corrupt, truncated "
                         f"or another format): {_reason(err)}") from err
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path} does not hold a state dict of named tensors "
                         f"(got {type(state).__name__})")
    for key, value in state.items():  # NaN weights would give NaN outputs: no cells, no error
        if value.is_floating_point() and not torch.isfinite(value).all():
            n_bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{path}: {key} holds {n_bad} NaN or inf values; the file "
                             f"is damaged")
    return dict(state)


# --- our folder format ----------------------------------------------------------------
def _to_json(obj) -> str:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)

    def default(o):  # numpy scalars/arrays and tensors
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    return json.dumps(obj, indent=2, default=default)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # not JSON, or not even text
        raise ValueError(f"{path} is not valid JSON: {_reason(err)}") from err


def _read_config(path: Path) -> tuple[ModelConfig, float]:
    """The architecture and ``diam_labels`` in a config.json; errors name the file and field."""
    meta = _read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path} has no 'config' entry (a JSON object of ModelConfig fields)")
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise ValueError(f"{path}: format_version must be a positive integer; got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}, newer "
                         f"than this cellpose_nb reads ({FORMAT_VERSION}); upgrade cellpose_nb")
    fields = meta["config"]
    try:
        # ModelConfig converts what it is given (int(4.5), float("nan")): check the JSON first
        features = fields.get("features")
        if "features" in fields and not (isinstance(features, list) and features
                                         and all(_is_int(f) and f > 0 for f in features)):
            raise ValueError(f"config.features must be a non-empty list of positive integers; "
                             f"got {features!r}")
        for name in ("n_channels", "n_out", "kernel_size"):
            if name in fields and not (_is_int(fields[name]) and fields[name] > 0):
                raise ValueError(f"config.{name} must be a positive integer; "
                                 f"got {fields[name]!r}")
        if "diam_mean" in fields:
            check_number("config.diam_mean", fields["diam_mean"], low=0, open_low=True)
        config = ModelConfig.from_dict(fields)
        diam_labels = meta.get("diam_labels", config.diam_mean)
        check_number("diam_labels", diam_labels, low=0, open_low=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
    return config, float(diam_labels)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _read_record_file(path: Path, field: str, config: ModelConfig):
    """The value of record field ``field`` stored in ``path`` (None when absent), checked."""
    if not path.is_file():
        return None
    value = _read_json(path)
    try:
        value = check_field(field, value)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    style_width = config.features[-1]  # one style value per channel of the deepest scale
    if field == "size_model" and len(value["coef"]) != style_width:
        raise ValueError(f"{path}: coef has {len(value['coef'])} values but the model's "
                         f"style vector has {style_width}; the size model belongs to "
                         f"another model")
    return value


def save(model: CellposeUNet, folder: str | os.PathLike, *, overwrite: bool = False,
         dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model`` to a folder: weights.safetensors, config.json and, for each field
    of ``model.record`` that is set, its file (training.json, thresholds.json,
    input.json, size_model.json).

    Parameters
    ----------
    model : CellposeUNet
    folder : path
        Created if needed.
    overwrite : bool
        Without it, any file of a model folder (:data:`MODEL_FILES`) already
        there raises FileExistsError and nothing is written.  With it, those
        files are replaced: the new ones are written to temporary files first
        and renamed over the old ones only when all are written, and a record
        file that this call does not write (a field that is now None) is
        removed, so that :func:`load` cannot pick it up.  Other files in the
        folder are never touched.
    dtype : torch.dtype or str, optional
        Storage dtype of the floating-point weights, e.g. ``torch.float16`` to
        halve the file; :func:`load` returns float32 parameters either way.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    FileExistsError
        A model file exists and not ``overwrite``.
    ValueError
        A record value that :func:`load` would refuse (a NaN threshold, ...),
        before anything is written.

    Examples
    --------
    >>> import tempfile
    >>> net = CellposeUNet(ModelConfig(features=(8, 16)))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     net.record = net.record.replace(thresholds={"cellprob": 0.0})
    ...     _ = save(net, tmp)
    ...     load(tmp).record.thresholds
    {'cellprob': 0.0}
    """
    folder = Path(folder)
    storage = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if dtype is not None and not (isinstance(storage, torch.dtype) and storage.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float16, "
                         f"got {dtype!r}")
    if not overwrite:
        for name in MODEL_FILES:
            if (folder / name).exists():
                raise FileExistsError(f"{folder / name} exists; pass overwrite=True to replace it")
    record = model.record
    for field in ("diam_labels", *RECORD_FILES):  # never write a file that load() refuses
        try:
            check_field(field, getattr(record, field))
        except ValueError as err:
            raise ValueError(f"cannot save {folder}: model.record.{field}: {err}") from None

    import safetensors.torch

    state = {k: v.detach().to("cpu", storage if storage and v.is_floating_point() else v.dtype)
             .contiguous() for k, v in model.state_dict().items()}
    diam_labels = model.config.diam_mean if record.diam_labels is None else record.diam_labels
    contents = {  # file name -> bytes
        WEIGHTS_FILE: safetensors.torch.save(state, metadata={
            "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}),
        CONFIG_FILE: _to_json({"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                               "config": model.config.to_dict(),
                               "diam_labels": float(diam_labels)}).encode()}
    for field, name in RECORD_FILES.items():
        if getattr(record, field) is not None:
            contents[name] = _to_json(getattr(record, field)).encode()
    folder.mkdir(parents=True, exist_ok=True)
    # all files or none, each whole at any time (cellpose_nb.atomic)
    write_files({folder / name: _writer(data) for name, data in contents.items()}, overwrite=True)
    for name in RECORD_FILES.values():  # a field that is now None: its old file would be read
        if name not in contents:
            (folder / name).unlink(missing_ok=True)
    return folder


def _writer(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


def load(folder: str | os.PathLike, *, device: str | torch.device | None = None) -> CellposeUNet:
    """Read a model folder written by :func:`save` (eval mode, on ``device``).

    Also reads ``weights.pt``/``weights.pth`` state dicts (``weights_only=True``)
    when there is no ``weights.safetensors``.

    Returns
    -------
    CellposeUNet
        With ``record`` read from the folder (a field is None when its file
        is absent).

    Raises
    ------
    FileNotFoundError
        Missing folder, config.json or weights file.
    ValueError
        A file that is not what its name says, naming the file and the field:
        unreadable or non-JSON files, corrupt or NaN weights, weights of another
        architecture, a config, threshold, size model or input recipe value
        out of its range (see :func:`cellpose_nb.model.record.check_field`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}, so it is not a model folder "
                                f"written by cellpose_nb.model.save (it holds "
                                f"{sorted(p.name for p in folder.iterdir())})")
    config, diam_labels = _read_config(config_path)
    candidates = [folder / n for n in (WEIGHTS_FILE, *TORCH_WEIGHTS_FILES)]
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has no weights file ({WEIGHTS_FILE})")
    model = CellposeUNet(config)
    _load_checked(model, _read_weights(weights), weights)
    model.record = ModelRecord(diam_labels=diam_labels, **{
        field: _read_record_file(folder / name, field, config)
        for field, name in RECORD_FILES.items()})
    return model.to(resolve_device(device)).eval()


def load_pretrained(name: str = "nuclei", *,
                    device: str | torch.device | None = None) -> CellposeUNet:
    """Load a model shipped with the package, from ``cellpose_nb/pretrained/<name>/``.

    Raises FileNotFoundError listing the available names when ``name`` is absent.
    """
    folder = _PRETRAINED / name
    if not (folder / CONFIG_FILE).is_file():
        shipped = _PRETRAINED.iterdir() if _PRETRAINED.is_dir() else []
        available = sorted(p.name for p in shipped if (p / CONFIG_FILE).is_file())
        raise FileNotFoundError(
            f"no pretrained model {name!r} in {PRETRAINED_DIR}; available: "
            f"{available or 'none yet'}. For the official Cellpose weights use "
            f"load_cellpose_weights({name!r})")
    with importlib.resources.as_file(folder) as path:
        return load(path, device=device)
