"""The training loop: :func:`train` and its epochs, validation, time budget and files.

Around Cellpose's recipe: a CSV history, resumable checkpoints, a NaN guard,
a wall-time budget (``max_minutes``) and the saved model with its training
record.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cellpose_nb import model as model_io
from cellpose_nb._alloc import reuse_freed_memory
from cellpose_nb.metrics import average_precision
from cellpose_nb.model.folder import _load_checked, _reason
from cellpose_nb.predict.net import _masks_at_scale
from cellpose_nb.train.checkpoint import (
    _ADVICE,
    _atomic_torch_save,
    _check_resumable,
    _read_checkpoint,
    _versions,
    _write_history,
)
from cellpose_nb.train.config import (
    CHECKPOINT_FILE,
    FLOW_CACHE_DIR,
    HISTORY_FILE,
    MODEL_DIR,
    TrainConfig,
    TrainResult,
)
from cellpose_nb.train.inputs import (
    _check_inputs,
    _drop_sparse,
    _rescale_factors,
    cached_flows,
    data_hash,
)
from cellpose_nb.train.loss import learning_rate_schedule
from cellpose_nb.train.precision import _torch_threads, precision_reason
from cellpose_nb.train.steps import _epoch_rng, _Run, _validation_rng
from cellpose_nb.train.thresholds import AP_IOU

__all__ = ["train"]


def _validate(run, val):
    """Validation loss on fixed random crops and AP@0.5 on the whole images."""
    model, config = run.model, run.config
    model.eval()
    rng, total = _validation_rng(config.seed), 0.0
    order = np.arange(len(val["images"]))
    with torch.no_grad():
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            x, f, m = run.batch(idx, rng, **val)
            total += run.loss(x, f, m).item() * len(idx)
    preds = [_masks_at_scale(x, model, scale=r) for x, r in zip(val["images"], val["rescale"])]
    ap = average_precision(val["labels"], preds, thresholds=[AP_IOU])[:, 0]
    model.train()
    return total / len(order), float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def _network(model, config):
    """``model`` itself, or a new network of that ModelConfig (None: the default one
    with ``config.diam_mean``) whose weights are seeded by ``config.seed``, the
    caller's torch RNG left as it was."""
    if isinstance(model, nn.Module):
        return model
    if model is None:
        model = model_io.ModelConfig(diam_mean=config.diam_mean or model_io.DIAM_MEAN)
    if not isinstance(model, model_io.ModelConfig):
        raise TypeError(f"model must be a CellposeUNet, a ModelConfig or None; "
                        f"got {type(model).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(config.seed)
        return model_io.CellposeUNet(model)


def _split_val_data(val_data):
    """``(images, labels)`` or ``(images, labels, names)`` -> the three (names may be None)."""
    if val_data is None:
        return None, None, None
    if len(val_data) not in (2, 3):
        raise ValueError(f"val_data must be (images, labels) or (images, labels, names); "
                         f"got a sequence of {len(val_data)}")
    images, labels, *names = val_data
    return images, labels, names[0] if names else None


def _run_folder(out_dir, resume, overwrite=False):
    """``(out, checkpoint)`` paths of a run (None without ``out_dir``), checked before any
    work: an earlier run in ``out_dir`` is continued (``resume``), started again
    (``overwrite``) or refused.  Creates nothing."""
    if resume and overwrite:
        raise ValueError("resume=True (--resume) continues the run in out_dir and "
                         "overwrite=True (--overwrite) starts it again: pass one of them")
    out = None if out_dir is None else Path(out_dir)
    checkpoint = None if out is None else out / CHECKPOINT_FILE
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    if resume and not checkpoint.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint {checkpoint}")
    if out is not None and out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} is a file; give a folder for the run")
    if out is not None and not (resume or overwrite):
        # what a run writes there; flows/ is a cache that any run may reuse
        earlier = [name for name in (CHECKPOINT_FILE, HISTORY_FILE, MODEL_DIR)
                   if (out / name).exists()]
        if earlier:
            go_on = ("pass resume=True (--resume) to continue it, "
                     if CHECKPOINT_FILE in earlier else "")
            raise FileExistsError(f"{out} holds an earlier training run ({', '.join(earlier)}): "
                                  f"{go_on}overwrite=True (--overwrite) to replace it, or "
                                  f"choose another out_dir")
    return out, checkpoint


def _resume(run, saved, checkpoint):
    """Load the optimizer (and loss scaler) state of the checkpoint; ``(history, epoch)``."""
    try:
        run.optimizer.load_state_dict(saved["optimizer"])
        if run.scaler is not None and saved.get("scaler"):
            run.scaler.load_state_dict(saved["scaler"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"the checkpoint {checkpoint}: its optimizer state does not fit this "
                         f"run ({_reason(exc)}); {_ADVICE}") from exc
    return list(saved["history"]), int(saved["epoch"])


def train(images, labels, model=None, *, config=None, val_data=None, names=None,
          out_dir=None, resume=False, overwrite=False, progress=True,
          command=None) -> TrainResult:
    """Train a network the Cellpose way.

    Parameters
    ----------
    images : sequence of ndarray (2, H, W) of float32
        Training network inputs (see :func:`~cellpose_nb.train.prepare_images`);
        sizes may differ.
    labels : sequence of ndarray (H, W) of int
    model : CellposeUNet or ModelConfig, optional
        A network, trained in place and moved to ``config.device`` (fine-tuning,
        or training in stages); or the architecture of a new one, whose weights
        are seeded by ``config.seed``.  None: ``ModelConfig(diam_mean=config.diam_mean
        or DIAM_MEAN)``.
    config : TrainConfig, optional
    val_data : (images, labels) or (images, labels, names), optional
        Validation set: loss on fixed random crops and AP@0.5 on the whole
        images (zoomed by ``diam_mean / true median diameter``), every
        ``config.val_every`` epochs and after the last.  The names are recorded
        in the training record.
    names : sequence of str, optional
        Names of the training images, recorded in the training record.
    out_dir : path, optional
        Run folder: ``history.csv`` (rewritten every epoch), ``checkpoint.pt``
        (model, optimizer, epoch, history; every ``save_every`` epochs, on
        Ctrl-C and at the end), ``flows/`` (cached flows) and at the end
        ``model/`` (:func:`cellpose_nb.model.save` with the training record).
        A folder that holds an earlier run (checkpoint, history or model) is
        refused, before any work, unless ``resume`` or ``overwrite``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt``.  With the same config and
        data the result equals an uninterrupted run (unless the checkpoint
        was written on Ctrl-C in the middle of an epoch: that epoch restarts
        from the partly updated weights).  A checkpoint that is unreadable,
        lacks an entry or holds another architecture's weights raises a
        ValueError naming it.
    overwrite : bool
        Start again in an ``out_dir`` that holds an earlier run, replacing
        its checkpoint, history and model files (other files are kept).
    progress : bool
        tqdm bar over the epochs, with the last losses as postfix.
    command : str or sequence of str, optional
        The command line, recorded in the training record.

    Returns
    -------
    TrainResult
        ``model`` (eval mode), ``history``, ``completed``, ``out_dir``, ``model_dir``.

    Raises
    ------
    FileExistsError
        ``out_dir`` holds an earlier run and neither ``resume`` nor ``overwrite``.
    ValueError
        Bad inputs (naming the image: "training image 3"), or a checkpoint that
        cannot be resumed (naming it and what is wrong).
    RuntimeError
        If the loss becomes NaN or infinite (names the epoch and batch).
    KeyboardInterrupt
        Re-raised after writing a checkpoint.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> lab = np.zeros((32, 32), np.int32)
    >>> for k in range(5): lab[2 + 6 * k: 6 + 6 * k, 4:12] = k + 1
    >>> x = np.stack([lab > 0, np.zeros_like(lab)]).astype(np.float32)
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=6.0))
    >>> cfg = TrainConfig(n_epochs=2, batch_size=2, crop_size=32, warmup_epochs=0)
    >>> res = train([x, x], [lab, lab], net, config=cfg, progress=False)
    >>> [sorted(h) for h in res.history][0]
    ['epoch', 'lr', 'seconds', 'train_loss', 'val_ap50', 'val_loss']
    """
    t_call = time.perf_counter()  # max_minutes counts from here (flows included)
    config = TrainConfig() if config is None else config
    out, checkpoint = _run_folder(out_dir, resume, overwrite)
    model = _network(model, config)
    val_images, val_labels, val_names = _split_val_data(val_data)
    names = list(names) if names is not None else None
    n_channels = model.config.n_channels
    images, labels = _check_inputs(images, labels, n_channels, "training", names)
    if len(images) == 0:
        raise ValueError("no training images given")
    have_val = val_images is not None and len(val_images) > 0
    if have_val:
        v_images, v_labels = _check_inputs(val_images, val_labels, n_channels, "validation",
                                           val_names)
    diam_mean = model.config.diam_mean if config.diam_mean is None else float(config.diam_mean)
    if diam_mean != model.config.diam_mean:
        raise ValueError(f"config.diam_mean={config.diam_mean} differs from the model's "
                         f"{model.config.diam_mean}; build the model with "
                         f"ModelConfig(diam_mean={config.diam_mean})")
    digest = data_hash(images, labels)
    # a model that was trained before (fine-tuning, or training in stages): keep its
    # record inside the new one, so that the whole lineage travels with the weights
    previous_record = model.record.training
    images, labels, names, kept = _drop_sparse(images, labels, names, config.min_train_masks)
    saved = None
    if resume:  # the whole checkpoint is read and checked before the flows are computed
        saved = _read_checkpoint(checkpoint)
        _check_resumable(saved, config, digest, checkpoint)
        # its weights: those of another architecture are refused, naming key and shapes
        _load_checked(model, saved["model"], f"the checkpoint {checkpoint}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    device = model_io.resolve_device(config.device)
    # on the CPU, reuse the heap for the activations of each step (cellpose_nb._alloc)
    with _torch_threads(config.num_threads), reuse_freed_memory(device.type == "cpu"):
        flows = cached_flows(labels, progress=progress,
                             cache_dir=None if out is None else out / FLOW_CACHE_DIR)
        diams, rescale = _rescale_factors(labels, diam_mean, config.rescale)
        model.to(device)
        model.record = model.record.replace(diam_labels=float(diams.mean()))
        run = _Run(model, config, images, labels, flows, rescale, device)
        val = None
        if have_val:
            v_flows = cached_flows(v_labels,
                                   cache_dir=None if out is None else out / FLOW_CACHE_DIR)
            val = {"images": v_images, "labels": v_labels, "flows": v_flows,
                   "rescale": _rescale_factors(v_labels, diam_mean, config.rescale)[1]}
        history, start = [], 0
        if resume:
            history, start = _resume(run, saved, checkpoint)

        state = {"epoch": start}

        def write_history():
            if out is not None:
                _write_history(out / HISTORY_FILE, history)

        def save_checkpoint():
            if checkpoint is None:
                return
            _atomic_torch_save({
                "model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else {},
                "epoch": state["epoch"], "history": history, "config": config.to_dict(),
                "data_hash": digest, "seed": config.seed,
                "torch_rng": torch.get_rng_state()}, checkpoint)
            write_history()

        completed = _loop(run, val, history, state, start, progress, save_checkpoint,
                          write_history, t_call)
    model.eval()
    if out is not None:
        record = {
            "config": config.to_dict(), "model_config": model.config.to_dict(),
            "data_hash": digest, "versions": _versions(), "history": history,
            "command": command if command is None or isinstance(command, str) else list(command),
            "seed": config.seed, "train_names": names,
            "val_names": list(val_names) if val_names is not None else None,
            "n_train": len(images), "n_val": len(v_images) if have_val else 0,
            "kept_train_indices": kept, "diam_labels": model.record.diam_labels,
            "epochs_done": state["epoch"], "completed": completed, "device": str(device),
            "precision": str(run.amp_dtype or torch.float32).removeprefix("torch."),
            "precision_reason": precision_reason(config, device.type),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if previous_record:
            record["pretrained"] = previous_record
        model.record = model.record.replace(training=record)
        model_io.save(model, out / MODEL_DIR, overwrite=True)
    return TrainResult(model, history, completed, out, None if out is None else out / MODEL_DIR)


def _loop(run, val, history, state, start, progress, save_checkpoint, write_history, t_call):
    """The epochs from ``start``; returns False when stopped by the time budget."""
    config, model = run.config, run.model
    rates = learning_rate_schedule(config)
    t_loop = time.perf_counter()
    bar = tqdm(range(start, config.n_epochs), initial=start, total=config.n_epochs,
               desc="train", disable=not progress, unit="epoch")
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            for group in run.optimizer.param_groups:
                group["lr"] = float(rates[epoch])
            model.train()
            rng = _epoch_rng(config.seed, epoch)
            order = run.epoch_order(rng)
            total = 0.0
            for b, begin in enumerate(range(0, len(order), config.batch_size)):
                idx = order[begin:begin + config.batch_size]
                loss = run.loss(*run.batch(idx, rng))
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"the training loss became {loss.item()} at epoch {epoch + 1}, batch "
                        f"{b + 1} (learning rate {rates[epoch]:.3g}); try a lower "
                        f"learning_rate, e.g. TrainConfig(learning_rate={rates.max() / 10:.3g})")
                run.step(loss)
                total += loss.item() * len(idx)
            row = {"epoch": epoch + 1, "train_loss": total / len(order), "val_loss": math.nan,
                   "val_ap50": math.nan, "lr": float(rates[epoch])}
            last = epoch + 1 == config.n_epochs
            if val is not None and ((epoch + 1) % config.val_every == 0 or last):
                row["val_loss"], row["val_ap50"] = _validate(run, val)
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            state["epoch"] = epoch + 1
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_ap50=f"{row['val_ap50']:.3f}")
            spent = time.perf_counter() - t_call
            per_epoch = (time.perf_counter() - t_loop) / (epoch + 1 - start)
            out_of_time = (config.max_minutes is not None and not last
                           and spent + per_epoch > 60 * config.max_minutes)
            if last or out_of_time or (epoch + 1) % config.save_every == 0:
                save_checkpoint()
            else:
                write_history()
            if out_of_time:
                return False
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    finally:
        bar.close()
    return True
