"""One optimisation step of a run: random crops to a batch, the loss, the update.

``_Run`` holds what a call of :func:`~cellpose_nb.train.train` works with (model,
optimizer, loss scaler, the data); the random generators of an epoch and of
validation are derived from the seed, so that a resumed run draws the same crops.
"""

from __future__ import annotations

import numpy as np
import torch

from cellpose_nb.augment import random_transform
from cellpose_nb.train.loss import segmentation_loss
from cellpose_nb.train.precision import amp_dtype


class _Run:
    """Everything one call of :func:`~cellpose_nb.train.train` works with (private)."""

    def __init__(self, model, config, images, labels, flows, rescale, device):
        self.model, self.config, self.device = model, config, device
        self.images, self.labels, self.flows, self.rescale = images, labels, flows, rescale
        self.amp_dtype = amp_dtype(config, device.type)
        # float16 needs loss scaling (small gradients underflow); bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate,
                                             momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                               weight_decay=config.weight_decay)

    def batch(self, indices, rng, images=None, labels=None, flows=None, rescale=None):
        images = self.images if images is None else images
        labels = self.labels if labels is None else labels
        flows = self.flows if flows is None else flows
        rescale = self.rescale if rescale is None else rescale
        size = (self.config.crop_size, self.config.crop_size)
        crops = [random_transform(images[i], labels[i], flows=flows[i], rng=rng, out_size=size,
                                  scale_range=self.config.scale_range, rescale=rescale[i])
                 for i in indices]
        x = torch.from_numpy(np.stack([c.image for c in crops])).to(self.device)
        f = torch.from_numpy(np.stack([c.flows for c in crops])).to(self.device)
        m = torch.from_numpy(np.stack([c.labels > 0 for c in crops])).to(self.device)
        return x, f, m

    def loss(self, x, f, m):
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float16,
                            enabled=self.amp_dtype is not None):
            y = self.model(x)[0]
        return segmentation_loss(y.float(), f, m)

    def step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def epoch_order(self, rng):
        n, k = len(self.images), self.config.n_images_per_epoch
        if k is None or k == n:
            return rng.permutation(n)
        return rng.choice(n, size=k, replace=True)


def _epoch_rng(seed, epoch):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, epoch)))


def _validation_rng(seed):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
