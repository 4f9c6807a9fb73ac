"""The diffusion player: step through the heat diffusion that defines one cell's flows."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellpose_nb import plot
from cellpose_nb.diffusion import heat_gradient, simulate_diffusion
from cellpose_nb.flows import HEAT_ITER_FACTOR, check_labels
from cellpose_nb.widgets._display import (
    _figure_png,
    _ipywidgets,
    _new_figure,
    _static_fallback,
    _widget_or_png,
)

__all__ = ["DiffusionPlayer", "play_diffusion"]

#: DiffusionPlayer keeps at most about this many snapshots.
MAX_SNAPSHOTS = 100


class DiffusionPlayer:
    """Step through the heat diffusion that defines one cell's flows.

    All snapshots are computed once (:func:`simulate_diffusion`); the Play
    button and the slider only pick one.  Each frame shows log10 of the heat
    in the cell's box and the arrows of its normalised gradient: at the last
    step these arrows are the cell's flows.

    Parameters
    ----------
    labels : ndarray (H, W) of int
    cell_id : int
    n_iter : int, optional
        Iterations (default Cellpose's, from the cell's box).
    every : int, optional
        Iterations between snapshots (default: about 100 snapshots).

    Examples
    --------
    >>> lab = np.zeros((20, 20), int); lab[3:15, 4:17] = 1
    >>> player = DiffusionPlayer(lab, 1)
    >>> from cellpose_nb.flows import heat_map
    >>> bool(np.allclose(player.heat(-1), heat_map(lab)))
    True
    >>> fig = player.static(step=3)
    """

    def __init__(self, labels, cell_id, *, n_iter=None, every=None):
        lab = check_labels(labels)
        if every is None:
            if n_iter is None:
                sl = ndi.find_objects((lab == cell_id).astype(np.int32))
                if not sl:
                    raise ValueError(f"cell_id={cell_id} is not in labels")
                rows, cols = sl[0][0].stop - sl[0][0].start, sl[0][1].stop - sl[0][1].start
                n_est = HEAT_ITER_FACTOR * (rows + cols + 4)
            else:
                n_est = n_iter
            every = max(1, int(np.ceil(n_est / MAX_SNAPSHOTS)))
        self.iterations, self.snapshots, self.box, self.center = simulate_diffusion(
            lab, cell_id, n_iter=n_iter, every=every)
        self.labels = lab
        self.cell_id = int(cell_id)
        self.n_steps = len(self.iterations)
        self.step = self.n_steps - 1
        final = self.snapshots[-1]
        positive = final[final > 0]
        self._log_range = (float(np.log10(positive.min())), float(np.log10(positive.max())))
        self._frames = {}
        self._widget = None

    def heat(self, step=-1):
        """Heat of the whole image at snapshot ``step`` (H, W), zero outside the cell."""
        r0, r1, c0, c1 = self.box
        out = np.zeros(self.labels.shape)
        out[r0:r1, c0:c1] = self.snapshots[step][1:-1, 1:-1]
        return out

    def gradient(self, step=-1):
        """Normalised heat gradient (2, H, W) at snapshot ``step``: the flows at the end."""
        r0, r1, c0, c1 = self.box
        out = np.zeros((2,) + self.labels.shape)
        out[:, r0:r1, c0:c1] = heat_gradient(self.snapshots[step])[:, 1:-1, 1:-1]
        return out

    def _frame(self, step):
        snap = self.snapshots[step]
        with np.errstate(divide="ignore"):
            logh = np.where(snap > 0, np.log10(np.where(snap > 0, snap, 1.0)), np.nan)
        return logh, heat_gradient(snap)

    def _draw(self, ax, step):
        import matplotlib as mpl

        logh, grad = self._frame(step)
        cmap = mpl.colormaps["magma"].with_extremes(bad="black")
        lo, hi = self._log_range
        r0, _, c0, _ = self.box
        extent = (c0 - 1.5, c0 - 1.5 + logh.shape[1], r0 - 1.5 + logh.shape[0], r0 - 1.5)
        img = ax.imshow(logh, cmap=cmap, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
        rows, cols = np.nonzero(grad.any(axis=0))
        step_px = max(1, max(logh.shape) // 24)
        sel = (rows % step_px == 0) & (cols % step_px == 0)
        rows, cols = rows[sel], cols[sel]
        q = ax.quiver(cols + c0 - 1, rows + r0 - 1, grad[1, rows, cols], grad[0, rows, cols],
                      angles="xy", scale_units="xy", scale=1.0 / (0.8 * step_px), color="cyan",
                      width=0.005)
        (centre,) = ax.plot([self.center[1]], [self.center[0]], "+", color="white", markersize=10)
        ax.set_title(f"cell {self.cell_id}: iteration {self.iterations[step]} / "
                     f"{self.iterations[-1]} (log10 heat)", fontsize="small")
        plot._bare(ax)
        return [img, q, centre]

    def static(self, *, step=None):
        """The frame at snapshot ``step`` (default: current) as a matplotlib figure."""
        fig, (ax,) = _new_figure(1, size=5.0)
        artists = self._draw(ax, self.step if step is None else step)
        fig.colorbar(artists[0], ax=ax, shrink=0.8)
        return fig

    def show_step(self, step):
        """Go to snapshot ``step``; updates the view when there is a widget."""
        if not -self.n_steps <= step < self.n_steps:
            raise ValueError(f"step must be in [0, {self.n_steps - 1}]; got {step}")
        self.step = int(step) % self.n_steps
        if self._widget is not None:
            if self.step not in self._frames:  # each frame is drawn once, replays are free
                self._ax.clear()
                self._draw(self._ax, self.step)
                self._frames[self.step] = _figure_png(self._fig)
            self.view.value = self._frames[self.step]
            if self.controls["step"].value != self.step:
                self.controls["step"].value = self.step

    @property
    def widget(self):
        """Play button + slider + view (built on first use)."""
        if self._widget is None:
            w = _ipywidgets()
            play = w.Play(value=self.step, min=0, max=self.n_steps - 1, step=1, interval=150)
            slider = w.IntSlider(value=self.step, min=0, max=self.n_steps - 1, description="snapshot")
            w.jslink((play, "value"), (slider, "value"))
            self.controls = {"play": play, "step": slider}
            self._fig, (self._ax,) = _new_figure(1, size=5.0)
            self.view = w.Image(format="png")
            self._widget = w.VBox([w.HBox([play, slider]), self.view])
            slider.observe(lambda change: self.show_step(change.new), "value")
            self.show_step(self.step)
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return _widget_or_png(self, **kwargs)


def play_diffusion(labels, cell_id, **kwargs):
    """A :class:`DiffusionPlayer` (its static figure, with a warning, without ipywidgets)."""
    return _static_fallback(DiffusionPlayer(labels, cell_id, **kwargs))
