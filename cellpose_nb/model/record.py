"""What a model knows besides its weights: one declared record, saved in its folder.

:class:`ModelRecord` is the ``record`` attribute of every
:class:`~cellpose_nb.model.CellposeUNet`; :func:`~cellpose_nb.model.save`
writes each field to its own file and :func:`~cellpose_nb.model.load` reads them back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

SHORT_REPR = 60  # longer field values are summarised in the repr
REPR_KEYS = 6  # how many keys of a summarised mapping the repr names


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
