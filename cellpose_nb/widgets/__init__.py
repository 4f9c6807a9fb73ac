"""Interactive explorers: flows, mask thresholds, heat diffusion, volumes; one per file.

Four explorers, each a plain Python object with

* pure methods that compute what is shown (``update``, ``pick_pixel``,
  ``heat``...), usable in scripts and tests without any widget;
* ``static(...)``: the same picture as a matplotlib figure for given
  parameter values (for nbviewer, or when ipywidgets is not installed);
* ``widget``: the ipywidgets controls and view, built on first use.  An
  explorer displays itself as its widget in Jupyter.

ipywidgets is imported here only, and lazily: ``explore_flows``,
``explore_thresholds``, ``play_diffusion`` and ``explore_volume`` fall back to the static figure
(with a warning) when it cannot be imported.

Everything expensive is computed once and cached; a slider move only redoes
what depends on the moved value (see :class:`ThresholdExplorer`).  The views
are images (``ipywidgets.Image``, PNG or JPEG) whose bytes are replaced on
each change, so they work in every Jupyter front end without a matplotlib
widget backend (ipympl).  Clicks on the flow explorer's figure reach Python
through ``ipyevents`` (a small widget library for mouse events on any
widget); without it, pixels are picked with the sliders (or ``pick_pixel``).

The numerical kernels live in the numpy layer: :mod:`cellpose_nb.diffusion`
(``simulate_diffusion``, ``heat_gradient``) and
:mod:`cellpose_nb.threshold_cache` (``follow_with_min``);
they are re-exported here.
"""

from cellpose_nb.diffusion import heat_gradient, simulate_diffusion
from cellpose_nb.threshold_cache import follow_with_min
from cellpose_nb.widgets._display import (
    JPEG_QUALITY,
    MIN_VIEW_PIXELS,
    PNG_LEVEL,
    VIEW_DPI,
    VIEW_FORMATS,
)
from cellpose_nb.widgets.diffusion_player import MAX_SNAPSHOTS, DiffusionPlayer, play_diffusion
from cellpose_nb.widgets.flow_explorer import FlowExplorer, explore_flows
from cellpose_nb.widgets.threshold_explorer import (
    AP_THRESHOLDS,
    CELLPROB_RANGE,
    CELLPROB_STEP,
    CLUSTER_CACHE_SIZE,
    FLOW_THRESHOLD_RANGE,
    FLOW_THRESHOLD_STEP,
    MIN_SIZE_MAX,
    RESULT_CACHE_SIZE,
    ThresholdExplorer,
    explore_thresholds,
)
from cellpose_nb.widgets.volume_explorer import VolumeExplorer, explore_volume

__all__ = [
    "FlowExplorer",
    "ThresholdExplorer",
    "DiffusionPlayer",
    "VolumeExplorer",
    "explore_flows",
    "explore_thresholds",
    "play_diffusion",
    "explore_volume",
    "simulate_diffusion",
    "heat_gradient",
    "follow_with_min",
    # constants
    "VIEW_DPI",
    "VIEW_FORMATS",
    "MIN_VIEW_PIXELS",
    "JPEG_QUALITY",
    "PNG_LEVEL",
    "MAX_SNAPSHOTS",
    "CELLPROB_RANGE",
    "CELLPROB_STEP",
    "FLOW_THRESHOLD_RANGE",
    "FLOW_THRESHOLD_STEP",
    "MIN_SIZE_MAX",
    "AP_THRESHOLDS",
    "CLUSTER_CACHE_SIZE",
    "RESULT_CACHE_SIZE",
]
