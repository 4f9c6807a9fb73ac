"""What a model knows besides its weights: one declared record, saved in its folder.

:class:`ModelRecord` is the ``record`` attribute of every
:class:`~cellpose_nb.model.CellposeUNet`; :func:`~cellpose_nb.model.save`
writes each field to its own file and :func:`~cellpose_nb.model.load` reads them back.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping

from cellpose_nb.masks import CELLPROB_LIMIT, FLOW_LIMIT

SHORT_REPR = 60  # longer field values are summarised in the repr
REPR_KEYS = 6  # how many keys of a summarised mapping the repr names
# The tuned thresholds a record may hold (thresholds.json; predict.segment reads the long
# name, else the short one) and their ranges, both ends included: load() refuses a file
# outside them (the same as predict.SegmentConfig's).
THRESHOLD_RANGES = {"cellprob_threshold": (-CELLPROB_LIMIT, CELLPROB_LIMIT),
                    "cellprob": (-CELLPROB_LIMIT, CELLPROB_LIMIT),
                    "flow_threshold": (0.0, FLOW_LIMIT), "flow": (0.0, FLOW_LIMIT)}
SIZE_MODEL_KEYS = ("coef", "style_mean", "target_mean", "diam_mean")  # SizeModel.to_dict()


@dataclasses.dataclass(frozen=True, repr=False)
class ModelRecord:
    """Metadata of a trained model, one field per file of its folder.

    Frozen: change it with ``model.record = model.record.replace(thresholds=...)``.
    The dicts are stored as they appear in their JSON files, so that this
    package layer needs neither the training nor the prediction code.

    Examples
    --------
    >>> record = ModelRecord(diam_labels=17.0)
    >>> record.replace(thresholds={"flow_threshold": 0.6}).thresholds
    {'flow_threshold': 0.6}
    >>> record
    ModelRecord(diam_labels=17.0, input_recipe=None, thresholds=None, size_model=None, training=None)
    """

    # mean diameter (px) of the training masks before rescaling (config.json);
    # None: the config's diam_mean
    diam_labels: float | None = None
    # how images became network input (input.json): {"channels": [...], "invert": ...},
    # the defaults of cellpose_nb.predict.segment for this model
    input_recipe: dict | None = None
    # tuned post-processing thresholds (thresholds.json), e.g. {"cellprob_threshold": ...}
    thresholds: dict | None = None
    # style -> diameter regression as SizeModel.to_dict() gives it (size_model.json);
    # an object with a to_dict() method is stored as that dict
    size_model: dict | None = None
    # the training record (training.json): config, history, data hash, ...
    training: dict | None = None

    def __post_init__(self):
        if self.diam_labels is not None:
            object.__setattr__(self, "diam_labels", float(self.diam_labels))
        if self.size_model is not None and hasattr(self.size_model, "to_dict"):
            object.__setattr__(self, "size_model", self.size_model.to_dict())

    def replace(self, **changes) -> ModelRecord:
        """A copy with ``changes`` applied (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={_short(getattr(self, f.name))}"
                           for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


def check_field(name: str, value):
    """``value`` as field ``name`` of a record keeps it, or a ValueError naming the
    entry that is wrong and what it must be (the caller adds where it came from).

    What :func:`~cellpose_nb.model.load` checks in each file of a model folder and
    :func:`~cellpose_nb.model.save` before writing one (a record in memory is not
    checked: segment() checks the thresholds it uses).  Only what the readers of a
    record rely on is checked: the known thresholds, the size model, the channels
    and inversion of the input recipe, and that each field is a JSON object; other
    entries are kept as they are.

    Examples
    --------
    >>> check_field("thresholds", {"cellprob_threshold": float("nan")})
    Traceback (most recent call last):
    ...
    ValueError: cellprob_threshold must be a finite number in [-20, 20]; got nan
    """
    if value is None:
        return None
    if name == "diam_labels":
        check_number("diam_labels", value, low=0.0, open_low=True)
        return float(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a JSON object (a dict); got {type(value).__name__}")
    if name == "thresholds":
        for key, (low, high) in THRESHOLD_RANGES.items():
            if key in value:
                check_number(key, value[key], low=low, high=high)
    elif name == "size_model":
        _check_size_model(value)
    elif name == "input_recipe":
        _check_input_recipe(value)
    return value


def check_number(what, value, *, low=-math.inf, high=math.inf, open_low=False):
    """Raise a ValueError naming ``what`` and the range unless ``value`` is a finite real
    number (not a bool) in [low, high], or (low, high] with ``open_low``.

    Examples
    --------
    >>> check_number("diam_mean", "abc", low=0, open_low=True)
    Traceback (most recent call last):
    ...
    ValueError: diam_mean must be a finite number > 0; got 'abc'
    """
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and (value > low if open_low else value >= low)
          and value <= high)
    if not ok:
        if math.isinf(low) and math.isinf(high):
            expected = "a finite number"
        elif math.isinf(high):
            expected = f"a finite number {'>' if open_low else '>='} {low:g}"
        else:
            expected = f"a finite number in [{low:g}, {high:g}]"
        raise ValueError(f"{what} must be {expected}; got {value!r}")


def _check_size_model(value):
    missing = [k for k in SIZE_MODEL_KEYS if k not in value]
    if missing:
        raise ValueError(f"has no {missing} (a size model holds {list(SIZE_MODEL_KEYS)})")
    for key in ("coef", "style_mean"):
        vector = value[key]
        if not isinstance(vector, (list, tuple)) or not vector:
            raise ValueError(f"{key} must be a non-empty list of numbers; got {vector!r:.60}")
        for i, v in enumerate(vector):
            check_number(f"{key}[{i}]", v)
    if len(value["coef"]) != len(value["style_mean"]):
        raise ValueError(f"coef has {len(value['coef'])} values but style_mean "
                         f"{len(value['style_mean'])}; both have one per style value")
    check_number("target_mean", value["target_mean"])
    check_number("diam_mean", value["diam_mean"], low=0.0, open_low=True)


def _check_input_recipe(value):
    if "channels" in value:
        channels = value["channels"]
        index = lambda c: isinstance(c, numbers.Integral) and not isinstance(c, bool)  # noqa: E731
        if not (isinstance(channels, (list, tuple)) and len(channels) == 2
                and (index(channels[0]) or channels[0] == "gray")
                and (index(channels[1]) or channels[1] in ("gray", None))):
            raise ValueError(f"channels must be a pair [cytoplasm, nuclei] of channel "
                             f"indices or 'gray' (nuclei may be null); got {channels!r}")
    if "invert" in value and value["invert"] not in (True, False, "auto"):
        raise ValueError(f"invert must be true, false or 'auto'; got {value['invert']!r}")


def record_field(model, name):
    """``model.record.<name>``, or None for a stand-in network without a record.

    Examples
    --------
    >>> class Net: record = ModelRecord(thresholds={"flow_threshold": 0.6})
    >>> record_field(Net(), "thresholds"), record_field(object(), "thresholds")
    ({'flow_threshold': 0.6}, None)
    """
    return getattr(getattr(model, "record", None), name, None)


def _short(value) -> str:
    """``repr(value)``, or the keys of a long mapping (training records are long)."""
    text = repr(value)
    if len(text) <= SHORT_REPR or not isinstance(value, Mapping):
        return text
    keys = [str(k) for k in value]
    more = ", ..." if len(keys) > REPR_KEYS else ""
    return f"<{len(keys)} keys: {', '.join(keys[:REPR_KEYS])}{more}>"
