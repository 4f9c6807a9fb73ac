"""The model folder: weights.safetensors, config.json and one JSON file per field of the record.

:func:`save` is the only writer of every file in a model folder, :func:`load`
its reader; :func:`load_pretrained` reads the folders shipped as package data.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .device import resolve_device
from .network import CellposeUNet, ModelConfig
from .record import ModelRecord

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
                         f"or another format): {type(err).__name__}: {err}") from err
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path} does not hold a state dict of named tensors "
                         f"(got {type(state).__name__})")
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
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err



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
        Without it an existing target file raises FileExistsError and nothing is
        written.  With it, a stale record file (training.json, thresholds.json, ...)
        that this call does not replace is deleted, so that :func:`load` cannot pick it up.
    dtype : torch.dtype or str, optional
        Storage dtype of the floating-point weights, e.g. ``torch.float16`` to
        halve the file; :func:`load` returns float32 parameters either way.

    Returns
    -------
    Path
        The folder.

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
    record = model.record
    extras = {name: getattr(record, field) for field, name in RECORD_FILES.items()}
    targets = [WEIGHTS_FILE, CONFIG_FILE] + [f for f, v in extras.items() if v is not None]
    if not overwrite:
        for name in targets:
            if (folder / name).exists():
                raise FileExistsError(f"{folder / name} exists; pass overwrite=True to replace it")
    folder.mkdir(parents=True, exist_ok=True)

    import safetensors.torch

    state = {k: v.detach().to("cpu", storage if storage and v.is_floating_point() else v.dtype)
             .contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, folder / WEIGHTS_FILE, metadata={
        "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
    diam_labels = model.config.diam_mean if record.diam_labels is None else record.diam_labels
    (folder / CONFIG_FILE).write_text(_to_json({
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(), "diam_labels": float(diam_labels)}))
    for name, value in extras.items():
        if value is not None:
            (folder / name).write_text(_to_json(value))
        elif overwrite:
            (folder / name).unlink(missing_ok=True)
    return folder


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
        Unreadable config or weights, or weights of another architecture.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}, so it is not a model folder "
                                f"written by cellpose_nb.model.save (it holds "
                                f"{sorted(p.name for p in folder.iterdir())})")
    meta = _read_json(config_path)
    if not isinstance(meta, dict) or "config" not in meta:
        raise ValueError(f"{config_path} has no 'config' entry")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {meta['format_version']}, newer "
                         f"than this cellpose_nb reads ({FORMAT_VERSION}); upgrade cellpose_nb")
    config = ModelConfig.from_dict(meta["config"])
    candidates = [folder / n for n in (WEIGHTS_FILE, *TORCH_WEIGHTS_FILES)]
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has no weights file ({WEIGHTS_FILE})")
    model = CellposeUNet(config)
    _load_checked(model, _read_weights(weights), weights)
    model.record = ModelRecord(
        diam_labels=float(meta.get("diam_labels", config.diam_mean)),
        **{field: _read_json(folder / name) if (folder / name).is_file() else None
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
