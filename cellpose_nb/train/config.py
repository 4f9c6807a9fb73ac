"""What a training run is configured with, what it returns, and where it writes.

:class:`TrainConfig` holds every knob of a training run (saved in the training
record): the loop (:func:`~cellpose_nb.train.train`), the split and the finishing
(:func:`~cellpose_nb.train.train_folder`, :func:`~cellpose_nb.train.finish_model`);
:class:`InputRecipe` says how raw images become network inputs;
:class:`TrainResult` is what :func:`~cellpose_nb.train.train` returns.  The names
of the files in a run folder are named here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch

from cellpose_nb.augment import CROP_SIZE, SCALE_RANGE
from cellpose_nb.predict import DEFAULT_CHANNELS
from cellpose_nb.train.inputs import VAL_FRACTION
from cellpose_nb.train.size_model import SIZE_CROP, SIZE_L2_GRID, SIZE_PASSES
from cellpose_nb.train.thresholds import CELLPROB_GRID, FLOW_GRID

__all__ = ["TrainConfig", "InputRecipe", "TrainResult", "CHECKPOINT_FILE", "HISTORY_FILE",
           "HISTORY_COLUMNS", "MODEL_DIR", "FLOW_CACHE_DIR"]

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_ap50", "lr", "seconds")
MODEL_DIR = "model"  # out_dir/model: the saved model folder
FLOW_CACHE_DIR = "flows"  # out_dir/flows: cached flows, <sha256 of labels>.npy
_OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Knobs of a training run (saved in the training record).

    The loop's (:func:`~cellpose_nb.train.train`), then the split of a folder
    (``val_fraction``, :func:`~cellpose_nb.train.train_folder`) and the
    finishing (size model and thresholds, :func:`~cellpose_nb.train.finish_model`).

    Examples
    --------
    >>> TrainConfig(n_epochs=3, optimizer="sgd", learning_rate=0.2).momentum
    0.9
    """

    n_epochs: int = 500  # passes over the training set (Cellpose CLI: 500)
    batch_size: int = 8  # crops per optimisation step (Cellpose: 8)
    learning_rate: float = 0.005  # peak learning rate (train_seg: 0.005 AdamW; SGD: 0.2)
    optimizer: str = "adamw"  # "adamw" (train_seg default) or "sgd" (Cellpose 1, CLI)
    momentum: float = 0.9  # SGD momentum (Cellpose: 0.9)
    weight_decay: float = 1e-5  # L2 weight decay (Cellpose: 1e-5)
    warmup_epochs: int = 10  # linear ramp 0 -> learning_rate over these epochs (Cellpose: 10)
    decay_epochs: int | None = None  # last epochs with halvings; None: Cellpose (100/50/0)
    n_halvings: int = 10  # halvings of the learning rate during the decay (Cellpose: 10)
    diam_mean: float | None = None  # mean diameter images are zoomed to; None: the model's
    rescale: bool = True  # zoom each image by diam_mean / its median object diameter
    scale_range: float = SCALE_RANGE  # random zoom in [1 - r/2, 1 + r/2] (Cellpose: 0.5)
    crop_size: int = CROP_SIZE[0]  # side of the square training crops (Cellpose's bsize)
    n_images_per_epoch: int | None = None  # crops per epoch; None: every image once
    min_train_masks: int = 5  # drop training images with fewer objects (Cellpose: 5)
    seed: int = 0  # seeds data order, augmentations, new weights, the split and the size crops
    device: str | None = None  # None: cuda -> mps -> cpu
    amp: bool | None = None  # mixed precision (AMP_DTYPES); None: cuda, and CPUs with AMX or AVX512-BF16 (amp_dtype)
    val_every: int = 10  # validate every this many epochs (and after the last)
    save_every: int = 5  # checkpoint every this many epochs (and after the last)
    num_threads: int | None = None  # torch.set_num_threads during training; None: unchanged
    max_minutes: float | None = None  # budget of one call: stop before an epoch that would overrun
    val_fraction: float = VAL_FRACTION  # train_folder: random share of the images held out
    size_passes: int = SIZE_PASSES  # finish_model: random crops per image for the size model
    size_crop: int = SIZE_CROP  # finish_model: side of those crops
    size_l2_grid: tuple[float, ...] = SIZE_L2_GRID  # finish_model: ridge penalties tried
    cellprob_grid: tuple[float, ...] = CELLPROB_GRID  # finish_model: cellprob thresholds tried
    flow_grid: tuple[float, ...] = FLOW_GRID  # finish_model: flow thresholds tried

    def __post_init__(self):
        for name in ("size_l2_grid", "cellprob_grid", "flow_grid"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        positive = ("n_epochs", "batch_size", "crop_size", "val_every", "save_every",
                    "size_passes", "size_crop")
        for name in positive:
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}; got {self.optimizer!r}")
        if not 0 <= self.learning_rate < float("inf"):
            raise ValueError(f"learning_rate must be finite and >= 0; got {self.learning_rate!r}")
        if self.num_threads is not None and not (int(self.num_threads) == self.num_threads >= 1):
            raise ValueError(f"num_threads must be None or a positive integer; got {self.num_threads!r}")
        if self.warmup_epochs < 0 or self.n_halvings < 0:
            raise ValueError("warmup_epochs and n_halvings must be >= 0")
        if self.decay_epochs is not None and self.decay_epochs < 0:
            raise ValueError(f"decay_epochs must be None or >= 0; got {self.decay_epochs!r}")
        if not 0 <= self.scale_range < 2:
            raise ValueError(f"scale_range must be in [0, 2); got {self.scale_range!r}")
        if self.diam_mean is not None and not self.diam_mean > 0:
            raise ValueError(f"diam_mean must be None or > 0; got {self.diam_mean!r}")
        if self.n_images_per_epoch is not None and self.n_images_per_epoch < 1:
            raise ValueError("n_images_per_epoch must be None or >= 1")
        if self.max_minutes is not None and not self.max_minutes >= 0:
            raise ValueError(f"max_minutes must be None or >= 0; got {self.max_minutes!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction!r}")

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of the fields."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class InputRecipe:
    """How raw images become network inputs (:func:`~cellpose_nb.train.prepare_images`).

    Saved with a model as ``input.json`` (:meth:`to_dict`, the form of
    ``ModelRecord.input_recipe``), so that :func:`cellpose_nb.predict.segment`
    builds new inputs the same way.

    Examples
    --------
    >>> InputRecipe(channels=("gray", None), invert="auto").to_dict()
    {'channels': ['gray', None], 'invert': 'auto'}
    >>> InputRecipe.from_dict({"channels": [1, 0], "invert": False}).channels
    (1, 0)
    """

    channels: tuple = DEFAULT_CHANNELS  # cytoplasm (or only) channel and nuclear channel
    invert: bool | str = False  # invert the first channel: True, False or "auto"
    channel_axis: int | None = None  # channel axis of the images read (None: last); not saved

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        if len(self.channels) != 2:
            raise ValueError(f"channels must be a pair (cytoplasm, nuclei); got {self.channels!r}")
        if self.invert not in (True, False, "auto"):
            raise ValueError(f"invert must be True, False or 'auto'; got {self.invert!r}")

    def to_dict(self) -> dict:
        """The saved form, ``{"channels": [...], "invert": ...}`` (``channel_axis`` is
        a property of the image files, not of the model)."""
        return {"channels": list(self.channels), "invert": self.invert}

    @classmethod
    def from_dict(cls, d: Mapping) -> InputRecipe:
        """Inverse of :meth:`to_dict` (also takes ``channel_axis``); unknown keys raise."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown InputRecipe fields {sorted(unknown)}")
        return cls(**d)


class TrainResult(NamedTuple):
    """What :func:`~cellpose_nb.train.train` returns.

    Attributes
    ----------
    model : CellposeUNet
        The trained network (eval mode), on the training device.
    history : list of dict
        One dict per epoch with the keys of ``HISTORY_COLUMNS``.
    completed : bool
        False when the call stopped early on ``max_minutes``; call again with
        ``resume=True`` to go on.
    out_dir : Path or None
    model_dir : Path or None
        ``out_dir/model``, where the model was saved.
    """

    model: torch.nn.Module
    history: list
    completed: bool
    out_dir: Path | None
    model_dir: Path | None
