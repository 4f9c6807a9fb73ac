"""Mask R-CNN for two-channel fields: the network, its training targets, and labels from its detections.

torchvision's ``maskrcnn_resnet50_fpn`` with ``weights=None, weights_backbone=None``
(nothing is downloaded; no package here ships pretrained weights for it), two
classes (background, cell), its first convolution replaced by one that reads
the two channels (cytoplasm, nuclei; each percentile-normalised by cellpose_nb)
and its resizing turned off (fields are used at their 520 x 696 size), up to
``DETECTIONS`` cells per field.  Without pretrained weights torchvision keeps
trainable BatchNorm in every layer.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

FIELD_MIN, FIELD_MAX = 520, 696  # the CIL fields' size: no rescaling inside the network
DETECTIONS = 250  # the most cells kept per field (the training fields have at most 141)
MIN_PIXELS = 30  # smaller painted objects are dropped (the data's own smallest cell size)


def build_model():
    import torch.nn as nn
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                  min_size=FIELD_MIN, max_size=FIELD_MAX,
                                  image_mean=[0.0, 0.0], image_std=[1.0, 1.0],
                                  box_detections_per_img=DETECTIONS)
    model.backbone.body.conv1 = nn.Conv2d(2, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def field_input(image):
    """(2, H, W) float32: cytoplasm and nuclei, each 1st -> 0 and 99th percentile -> 1."""
    from cellpose_nb.normalize import to_network_input

    return to_network_input(image, channels=(0, 1))


def targets_from_labels(labels):
    """torchvision's target dict for one label image: boxes (x0, y0, x1, y1), labels, masks."""
    import torch

    labels = np.asarray(labels)
    boxes, masks = [], []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        rows, cols = sl
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
        masks.append(labels == k)
    n = len(boxes)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": torch.from_numpy(np.asarray(masks, np.uint8).reshape(n, *labels.shape))}


def augment_pair(x, labels, rng):
    """Random transpose and flips of a (2, H, W) input and its labels, and an intensity change."""
    if rng.random() < 0.5:
        x, labels = x.transpose(0, 2, 1), labels.T
    if rng.random() < 0.5:
        x, labels = x[:, ::-1], labels[::-1]
    if rng.random() < 0.5:
        x, labels = x[:, :, ::-1], labels[:, ::-1]
    x = x * np.float32(rng.uniform(0.8, 1.25))
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(labels)


def detections(model, x, *, min_score):
    """The network's cells on one (2, H, W) input: scores (N,) and uint8 soft masks (N, H, W)."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model([torch.from_numpy(np.ascontiguousarray(x))])[0]
    keep = out["scores"] >= min_score
    scores = out["scores"][keep].numpy()
    masks = (out["masks"][keep, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return scores, masks


def labels_from_detections(scores, masks, *, score_threshold, mask_threshold=0.5):
    """A label image (H, W) int32: detections above ``score_threshold``, best first; a pixel
    belongs to the best-scoring mask that covers it (above ``mask_threshold``)."""
    shape = masks.shape[1:]
    labels = np.zeros(shape, np.int32)
    level = np.uint8(round(255 * mask_threshold))
    next_id = 1
    for k in np.argsort(-scores, kind="stable"):
        if scores[k] < score_threshold:
            break
        free = (masks[k] > level) & (labels == 0)
        if free.sum() >= MIN_PIXELS:
            labels[free] = next_id
            next_id += 1
    return labels
