"""Training data: network inputs, their cached flows, checks, the split, the zoom.

Training inputs are network inputs: (2, H, W) float32 arrays, as returned by
:func:`prepare_images`.  The flows of every label image are computed once
(:func:`cached_flows`); images with too few objects are left out, and each
image is zoomed so that its objects have the model's ``diam_mean``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from cellpose_nb.atomic import write_bytes, write_file
from cellpose_nb.flows import check_labels, masks_to_flows
from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict import DEFAULT_CHANNELS, MIN_DIAMETER, median_diameter

__all__ = ["prepare_images", "median_diameter", "cached_flows", "data_hash", "split_train_val",
           "TrainValSplit", "VAL_FRACTION"]

VAL_FRACTION = 0.1  # share of the images split_train_val holds out for validation


def prepare_images(images, *, channels=DEFAULT_CHANNELS, channel_axis=None, invert=False,
                   normalize=True) -> list[np.ndarray]:
    """Turn raw images into network inputs, (2, H, W) float32 each.

    A loop over :func:`cellpose_nb.normalize.to_network_input` (percentile
    normalisation, cytoplasm + nuclear channel).

    Examples
    --------
    >>> [x.shape for x in prepare_images([np.ones((4, 5)), np.ones((3, 3, 2))], channels=(0, 1))]
    [(2, 4, 5), (2, 3, 3)]
    """
    return [to_network_input(im, channels=channels, channel_axis=channel_axis,
                             normalize=normalize, invert=invert) for im in images]


def _labels_key(labels) -> str:
    lab = check_labels(labels)
    digest = hashlib.sha256(f"heat{lab.shape}{lab.dtype}".encode())
    digest.update(lab.tobytes())
    return digest.hexdigest()


def cached_flows(labels_list, *, cache_dir=None, progress=False) -> list[np.ndarray]:
    """Flows of every label image, computed once and optionally kept on disk.

    Parameters
    ----------
    labels_list : sequence of ndarray (H, W) of int
    cache_dir : path, optional
        Folder of ``<sha256 of the labels>.npy`` files, each with a
        ``<same>.json`` that holds the SHA-256 of its labels and of the flows:
        flows found there are read, the others computed and written.  Cached
        flows that are unreadable, of the wrong shape, or do not match their
        labels or checksum are named in a warning and recomputed.
    progress : bool
        tqdm bar over the images.

    Returns
    -------
    list of ndarray (2, H, W) of float32

    Examples
    --------
    >>> lab = np.zeros((9, 9), np.int32); lab[2:7, 2:7] = 1
    >>> cached_flows([lab])[0].shape
    (2, 9, 9)
    """
    folder = None if cache_dir is None else Path(cache_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    out = []
    for labels in tqdm(labels_list, desc="flows", disable=not progress, leave=False):
        key = None if folder is None else _labels_key(labels)
        path = None if folder is None else folder / f"{key}.npy"
        cached = None if path is None else _read_cached_flows(path, key, np.shape(labels))
        if cached is not None:
            out.append(cached)
            continue
        flows = masks_to_flows(labels)
        if path is not None:
            _write_cached_flows(path, key, flows)
        out.append(flows)
    return out


def _flows_digest(flows) -> str:
    digest = hashlib.sha256(f"{flows.shape}{flows.dtype}".encode())
    digest.update(np.ascontiguousarray(flows).tobytes())
    return digest.hexdigest()


def _read_cached_flows(path, key, shape):
    """The flows cached in ``path`` for the labels of hash ``key`` and ``shape``, or None
    when there are none, or (with a warning naming the file) when they cannot be trusted."""
    if not path.is_file():
        return None
    record = path.with_suffix(".json")  # what the flows were computed from, and their hash
    try:
        cached = np.load(path)
        meta = json.loads(record.read_text())
    except FileNotFoundError:
        problem = f"have no {record.name} (the checksum of their labels and flows)"
    except (OSError, ValueError) as exc:  # truncated or corrupt
        problem = f"are unreadable ({exc})"
    else:
        meta = meta if isinstance(meta, dict) else {}
        if cached.shape != (2, *shape):
            problem = f"have shape {cached.shape}, not {(2, *shape)}"
        elif meta.get("labels_sha256") != key:
            problem = f"were computed from other labels than theirs ({record.name})"
        elif meta.get("flows_sha256") != _flows_digest(cached):
            problem = f"do not match their checksum in {record.name}"
        else:
            return cached
    warnings.warn(f"cached flows {path} {problem}; recomputing them", stacklevel=3)
    return None


def _write_cached_flows(path, key, flows):
    """Write the flows, then their checksum record, each whole (:mod:`cellpose_nb.atomic`):
    an interrupted write leaves flows without a record, which are recomputed."""
    write_file(path, lambda tmp: np.save(tmp, flows), overwrite=True)
    record = {"labels_sha256": key, "flows_sha256": _flows_digest(flows)}
    write_bytes(path.with_suffix(".json"), json.dumps(record).encode(), overwrite=True)


def data_hash(images, labels) -> str:
    """SHA-256 over the shapes, dtypes and bytes of the images and labels, in order.

    Examples
    --------
    >>> len(data_hash([np.zeros((2, 4, 4), np.float32)], [np.zeros((4, 4), np.int32)]))
    64
    """
    digest = hashlib.sha256()
    for array in (*images, *labels):
        a = np.ascontiguousarray(array)
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


class TrainValSplit(NamedTuple):
    """What :func:`split_train_val` returns: sorted indices of each part."""

    train_idx: np.ndarray
    val_idx: np.ndarray


def split_train_val(n, *, val_fraction=VAL_FRACTION, seed=0, strata=None) -> TrainValSplit:
    """Deterministic train/validation split of ``n`` items, optionally stratified.

    Each stratum (e.g. imaging modality) gives ``round(val_fraction * size)``
    items to validation (at least one when the stratum has two or more items
    and ``val_fraction > 0``), drawn with ``np.random.default_rng(seed)``.

    Returns
    -------
    TrainValSplit
        ``train_idx``, ``val_idx``: sorted ndarrays of int.

    Examples
    --------
    >>> tr, va = split_train_val(10, val_fraction=0.2, seed=0)
    >>> len(tr), len(va), sorted([*tr, *va]) == list(range(10))
    (8, 2, True)
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    strata = np.zeros(n, int) if strata is None else np.asarray(strata)
    if len(strata) != n:
        raise ValueError(f"strata has {len(strata)} entries for {n} items")
    rng = np.random.default_rng(seed)
    val = []
    for value in sorted(set(strata.tolist()), key=str):
        members = np.flatnonzero(strata == value)
        k = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            k = max(k, 1)
        val.extend(rng.permutation(members)[:k].tolist())
    val_idx = np.array(sorted(val), dtype=int)
    return TrainValSplit(np.setdiff1d(np.arange(n), val_idx), val_idx)


def _check_inputs(images, labels, n_channels, what, names=None):
    """The images as float32 network inputs and the labels checked; an error names the
    item by its index and, when given, its name ("training image 3 (s3)")."""
    if len(images) != len(labels):
        raise ValueError(f"{what}: {len(images)} images but {len(labels)} label images")
    checked_images, checked_labels = [], []
    for k, (image, lab) in enumerate(zip(images, labels)):
        item = f"{k} ({names[k]})" if names is not None and k < len(names) else f"{k}"
        x = np.asarray(image)
        if x.ndim != 3 or x.shape[0] != n_channels:
            raise ValueError(f"{what} image {item} has shape {x.shape}; expected network inputs "
                             f"({n_channels}, H, W): use prepare_images(images, channels=...)")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():  # would make the loss NaN at a random later batch
            raise ValueError(f"{what} image {item} contains {int((~np.isfinite(x)).sum())} "
                             f"NaN or inf values; fix or mask them first")
        lab = check_labels(lab, name=f"{what} labels {item}")
        if lab.shape != x.shape[1:]:
            raise ValueError(f"{what} image {item} is {x.shape[1:]} but its labels are "
                             f"{lab.shape}")
        checked_images.append(x)
        checked_labels.append(lab)
    return checked_images, checked_labels


def _rescale_factors(labels, diam_mean, rescale):
    diams = np.array([max(MIN_DIAMETER, median_diameter(lab)) for lab in labels])
    return diams, (diam_mean / diams if rescale else np.ones(len(diams)))


class _Kept(NamedTuple):
    """The training images with enough objects, and their indices in the input."""

    images: list
    labels: list
    names: list | None
    indices: list


def _drop_sparse(images, labels, names, min_masks) -> _Kept:
    counts = [len(np.unique(lab)) - (1 if (lab == 0).any() else 0) for lab in labels]
    keep = [k for k, c in enumerate(counts) if c >= min_masks]
    if len(keep) < len(images):
        dropped = [names[k] if names else k for k in range(len(images)) if k not in set(keep)]
        warnings.warn(f"{len(dropped)} training images have fewer than min_train_masks="
                      f"{min_masks} objects and are left out: {dropped[:10]}"
                      f"{' ...' if len(dropped) > 10 else ''}", stacklevel=3)
    if not keep:
        raise ValueError(f"no training image has at least min_train_masks={min_masks} objects")
    return _Kept([images[k] for k in keep], [labels[k] for k in keep],
                 [names[k] for k in keep] if names else None, keep)
