"""Cellpose's training objective and learning-rate schedule (``train.train_seg``).

:func:`segmentation_loss`: ``0.5 * MSE`` on the scaled flows plus binary
cross-entropy on the cell probability; :func:`learning_rate_schedule`: linear
warm-up, constant, then halvings over the last epochs.
"""

from __future__ import annotations

import numpy as np
import torch  # noqa: F401  (the doctests use it)
import torch.nn.functional as F

from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.train.config import TrainConfig

__all__ = ["segmentation_loss", "learning_rate_schedule"]

DECAY_RULE = ((300, 100), (100, 50))  # Cellpose: > 300 epochs decay over 100, > 100 over 50


def segmentation_loss(y, flows, cell_mask):
    """Cellpose's training loss (``cellpose.train._loss_fn_seg``).

    ``0.5 * MSE(y[:, :2], FLOW_SCALE * flows) + BCEWithLogits(y[:, 2], cell_mask)``,
    both means over all pixels.

    Parameters
    ----------
    y : torch.Tensor (B, 3, H, W)
        Network output: ``FLOW_SCALE * d_row``, ``FLOW_SCALE * d_col``, cellprob logit.
    flows : torch.Tensor (B, 2, H, W)
        True unit flows.
    cell_mask : torch.Tensor (B, H, W)
        True where a pixel belongs to an object (bool or 0/1).

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    >>> y = torch.zeros(1, 3, 2, 2)
    >>> round(float(segmentation_loss(y, torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2))), 4)
    0.6931
    """
    flow_loss = F.mse_loss(y[:, :2], FLOW_SCALE * flows) / 2
    prob_loss = F.binary_cross_entropy_with_logits(y[:, 2], cell_mask.to(y.dtype))
    return flow_loss + prob_loss


def learning_rate_schedule(config: TrainConfig) -> np.ndarray:
    """Learning rate of every epoch (Cellpose's ``train_seg`` schedule).

    Linear warm-up from 0 over ``warmup_epochs`` (``np.linspace(0, lr, warmup)``),
    then constant, then over the last ``decay_epochs`` epochs ``n_halvings``
    equal steps, each halving the rate.  ``decay_epochs=None`` is Cellpose's
    rule: 100 epochs when ``n_epochs > 300``, 50 when ``> 100``, else none.

    Returns
    -------
    ndarray (n_epochs,) of float64

    Examples
    --------
    >>> learning_rate_schedule(TrainConfig(n_epochs=6, warmup_epochs=3, learning_rate=1.0,
    ...                                    decay_epochs=2, n_halvings=2)).tolist()
    [0.0, 0.5, 1.0, 1.0, 0.5, 0.25]
    """
    n, lr = config.n_epochs, config.learning_rate
    decay = config.decay_epochs
    if decay is None:
        decay = next((d for above, d in DECAY_RULE if n > above), 0)
    rates = np.full(n, lr, dtype=np.float64)
    ramp = np.linspace(0, lr, config.warmup_epochs)
    rates[: min(n, len(ramp))] = ramp[:n]
    decay = min(decay, n)
    if decay and config.n_halvings:
        steps = np.arange(decay) * config.n_halvings // decay + 1
        rates[n - decay:] = rates[n - decay - 1 if n > decay else 0] / 2.0**steps
    return rates
