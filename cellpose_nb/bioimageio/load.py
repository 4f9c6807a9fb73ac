"""Read a bioimage.io package back as a cellpose_nb model: :func:`load_bioimageio`.

Two kinds of packages are read: ours (:func:`~cellpose_nb.bioimageio.export_bioimageio`,
with a ``config.cellpose_nb`` entry that gives the architecture and the record)
and Cellpose's own (``cellpose.export``: ``pytorch_state_dict`` weights of
``CPnet``, whose architecture is read off the weight shapes).  What is trusted:

- the rdf is parsed as plain YAML (no tags that build objects) and validated by
  ``bioimageio.spec`` without any file or network access;
- only the ``pytorch_state_dict`` weights are read, from inside the package
  (never a URL), checked against the rdf's SHA-256, with
  ``torch.load(..., weights_only=True)``, which unpickles tensors and plain
  containers only.  ``torchscript`` weights are never loaded: loading a
  TorchScript file runs the code it holds;
- the package's architecture source is never imported: a
  :class:`~cellpose_nb.model.CellposeUNet` is built from the recorded
  configuration (or the CPnet weight shapes) and the weights are loaded into it,
  each name and shape checked.

Nothing is extracted or written (see :mod:`~cellpose_nb.bioimageio.package_files`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import torch

from cellpose_nb.model import (
    CellposeUNet,
    ModelConfig,
    ModelRecord,
    from_cellpose_state_dict,
)
from cellpose_nb.model.device import resolve_device
from cellpose_nb.model.folder import _load_checked
from cellpose_nb.model.record import check_field

from ._extra import require
from .export import FORMAT_NAME, FORMAT_VERSION
from .package_files import MAX_RDF_BYTES, PackageFiles, sha256

CELLPOSE_FIRST_KEY = "downsample.down.res_down_0.proj.1.weight"  # how a CPnet state dict begins
RECORD_FIELDS = ("input_recipe", "thresholds", "size_model")  # read from config.cellpose_nb
SHOW_ERRORS = 3  # validation errors quoted in the message


def load_bioimageio(source: str | os.PathLike, *,
                    device: str | torch.device | None = None) -> CellposeUNet:
    """A cellpose_nb model from a bioimage.io package (ours or Cellpose's).

    Parameters
    ----------
    source : path
        The package zip, its folder, or its ``rdf.yaml``.
    device : str or torch.device, optional
        Default: the best available (cuda -> mps -> cpu).

    Returns
    -------
    CellposeUNet
        In eval mode, with the weights of the package.  From one of ours its
        ``record`` holds the model's input recipe, tuned thresholds, size model
        and ``diam_labels``, so ``segment(image, model)`` behaves as with the
        original model; from a Cellpose package, ``diam_mean`` and
        ``diam_labels`` come from the weights and the input recipe reads
        channels 0 (cytoplasm) and 1 (nuclei).

    Raises
    ------
    FileNotFoundError
        No such package, or a file it names is missing.
    ValueError
        A corrupt, foreign or hostile package, naming the file: an unsafe or
        oversized zip, an rdf that is not a valid bioimage.io model, weights
        that are not in the package, do not match its SHA-256, are not a plain
        state dict, hold NaN, or are neither cellpose_nb's nor Cellpose's
        (names and shapes).
    ImportError
        The ``bioimageio`` extra is missing.

    Examples
    --------
    >>> load_bioimageio("no_such_package.zip")
    Traceback (most recent call last):
    ...
    FileNotFoundError: bioimage.io package no_such_package.zip does not exist
    """
    with PackageFiles(source) as files:
        rdf = _read_rdf(files)
        weights = (rdf.get("weights") or {}).get("pytorch_state_dict")
        if not isinstance(weights, Mapping):
            formats = sorted(rdf.get("weights") or {})
            raise ValueError(  # noqa: TRY004  (a file's content: ValueError, as model.load)
                f"{files.where(files.rdf_name)} has no pytorch_state_dict weights (it has "
                f"{formats}); load_bioimageio reads only those, since loading torchscript or "
                f"other formats runs code from the package")
        name, state = _read_state_dict(files, weights)
        where = files.where(name)
        ours = (rdf.get("config") or {}).get("cellpose_nb")
        if ours is not None:
            model = _ours(state, ours, where, files.where(files.rdf_name))
        elif CELLPOSE_FIRST_KEY in state:
            model = _cellpose(state, rdf, where)
        else:
            raise ValueError(f"{where}: not a Cellpose-style network: the rdf has no "
                             f"config.cellpose_nb entry and the weights are not a Cellpose CPnet "
                             f"state dict (no {CELLPOSE_FIRST_KEY!r}; first keys "
                             f"{list(state)[:3]})")
    return model.to(resolve_device(device)).eval()


def _read_rdf(files: PackageFiles) -> dict:
    """The rdf as a dict, validated by bioimageio.spec (format only, no file or network access)."""
    ruyaml = require("ruyaml")
    spec = require("bioimageio.spec")
    where = files.where(files.rdf_name)
    text = files.read(files.rdf_name, max_bytes=MAX_RDF_BYTES)
    try:
        rdf = ruyaml.YAML(typ="safe", pure=True).load(text)
    except Exception as err:  # ruyaml's errors have no common base beyond Exception
        raise ValueError(f"{where} is not valid YAML: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        kind = rdf.get("type") if isinstance(rdf, dict) else type(rdf).__name__
        raise ValueError(f"{where} does not describe a bioimage.io model (type {kind!r})")
    descr = spec.build_description(
        rdf, context=spec.ValidationContext(perform_io_checks=False))
    if descr.validation_summary.status == "failed":
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}"
                  for d in descr.validation_summary.details for e in d.errors]
        raise ValueError(f"{where} is not a valid bioimage.io model description: "
                         f"{'; '.join(errors[:SHOW_ERRORS]) or 'see bioimageio validate'}"
                         f"{' ...' if len(errors) > SHOW_ERRORS else ''}")
    return rdf


def _read_state_dict(files: PackageFiles, weights: Mapping) -> tuple[str, dict]:
    """The package's state dict, read with ``weights_only=True`` after its SHA-256 is checked."""
    name = weights.get("source")
    rdf = files.where(files.rdf_name)
    if not isinstance(name, str) or "://" in name:
        raise ValueError(f"{rdf}: the pytorch_state_dict weights are {name!r}, not a file "
                         f"inside the package; load_bioimageio downloads nothing")
    data = files.read(name)
    where = files.where(name)
    expected = weights.get("sha256")
    if expected is not None and sha256(data) != str(expected).lower():
        raise ValueError(f"{where} does not match the SHA-256 in {rdf} (corrupt or altered)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types; all mean "not plain weights"
        first = str(err).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        raise ValueError(f"{where} is not a plain state dict of tensors (corrupt, or it holds "
                         f"objects that would run code when unpickled): {type(err).__name__}: "
                         f"{first[0] if first else ''}") from err
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{where} does not hold a state dict of named tensors "
                         f"(got {type(state).__name__})")
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{where}: {key} holds NaN or inf values; the file is damaged")
    return name, dict(state)


def _ours(state, entry, where, rdf) -> CellposeUNet:
    """A model from our own package: architecture and record from ``config.cellpose_nb``."""
    if not isinstance(entry, Mapping) or entry.get("format") != FORMAT_NAME:
        raise ValueError(f"{rdf}: config.cellpose_nb is not a {FORMAT_NAME} entry")
    version = entry.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{rdf}: config.cellpose_nb.format_version {version!r} is not one this "
                         f"cellpose_nb reads (1 to {FORMAT_VERSION}); upgrade cellpose_nb")
    try:
        fields = entry.get("model_config")
        if not isinstance(fields, Mapping):
            raise ValueError(  # noqa: TRY004  (a file's content: ValueError, as model.load)
                "model_config must be a mapping of ModelConfig fields")
        config = ModelConfig.from_dict(fields)
        values = {f: check_field(f, entry.get(f)) for f in ("diam_labels", *RECORD_FIELDS)}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{rdf}: config.cellpose_nb: {err}") from err
    size_model = values["size_model"]
    if size_model is not None and len(size_model["coef"]) != config.features[-1]:
        raise ValueError(f"{rdf}: config.cellpose_nb.size_model has {len(size_model['coef'])} "
                         f"coefficients but the network's style vector {config.features[-1]}")
    model = CellposeUNet(config)
    _load_checked(model, state, where)
    model.record = ModelRecord(**values)
    return model


def _cellpose(state, rdf, where) -> CellposeUNet:
    """A model from a Cellpose package: architecture from the CPnet weight shapes."""
    try:
        model = from_cellpose_state_dict(state)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    axes = (rdf.get("inputs") or [{}])[0].get("axes") or []
    channel = next((a for a in axes if isinstance(a, Mapping) and a.get("type") == "channel"), {})
    n_in = len(channel.get("channel_names") or []) or model.config.n_channels
    model.record = model.record.replace(
        input_recipe={"channels": [0, 1] if n_in >= 2 else [0, None], "invert": False})
    return model
