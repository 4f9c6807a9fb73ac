"""cellpose_nb: teach and do cell segmentation the Cellpose way.

The NumPy layer (``data``, ``normalize``, ``flows``, ``masks``, ``metrics``,
``augment``) imports neither torch, matplotlib nor ipywidgets; ``model``,
``train`` and ``predict`` need torch; ``plot`` needs matplotlib; ``widgets``
needs ipywidgets.  Import the modules you need, e.g.::

    from cellpose_nb import flows, masks, metrics
"""

__version__ = "0.3.0"

__all__ = ["__version__"]
