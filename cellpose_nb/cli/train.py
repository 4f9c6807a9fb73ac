"""``cellpose-nb train``: train (or fine-tune) a model on a Cellpose-style folder.

Every default is read from where it is owned (``TrainConfig``, ``ModelConfig``),
so the command line and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from cellpose_nb.cli._common import add_channel_options, field_default, load_model, parse_channels, parse_invert
from cellpose_nb.model import DIAM_MEAN, ModelConfig
from cellpose_nb.train import InputRecipe, TrainConfig, train_folder

#: exit code of a run stopped by --max-minutes (resume it with --resume)
EXIT_BUDGET = 3


def add_parser(sub):
    c = functools.partial(field_default, TrainConfig)
    tr = sub.add_parser("train", help="train a model on a Cellpose-style folder")
    tr.add_argument("folder", type=Path, help="folder of <name>_img.tif + <name>_masks.tif")
    tr.add_argument("--out", type=Path, required=True, help="run folder (model, history, checkpoints)")
    tr.add_argument("--epochs", type=int, default=c("n_epochs"))
    tr.add_argument("--batch-size", type=int, default=c("batch_size"))
    tr.add_argument("--crop-size", type=int, default=c("crop_size"), help="side of the training crops")
    tr.add_argument("--learning-rate", type=float, default=c("learning_rate"))
    tr.add_argument("--optimizer", choices=["sgd", "adamw"], default=c("optimizer"))
    tr.add_argument("--diam-mean", type=float, default=None,
                    help=f"model's mean cell diameter in px (default: the pretrained model's, else {DIAM_MEAN:g})")
    tr.add_argument("--features", type=int, nargs="+", default=list(ModelConfig().features))
    add_channel_options(tr, default_help="the --pretrained model's")
    tr.add_argument("--val-list", type=Path, default=None,
                    help="text file of validation image names, one per line "
                         "(default: a random --val-fraction)")
    tr.add_argument("--images-per-epoch", type=int, default=c("n_images_per_epoch"),
                    help="crops per epoch (default: every training image once)")
    tr.add_argument("--warmup", type=int, default=c("warmup_epochs"), help="warm-up epochs")
    tr.add_argument("--decay", type=int, default=c("decay_epochs"),
                    help="epochs of learning-rate halvings at the end (default: Cellpose's rule)")
    tr.add_argument("--val-every", type=int, default=c("val_every"), help="validate every N epochs")
    tr.add_argument("--size-passes", type=int, default=c("size_passes"),
                    help="random crops per training image for the size model")
    tr.add_argument("--size-crop", type=int, default=c("size_crop"), help="side of those crops")
    tr.add_argument("--threads", type=int, default=c("num_threads"), help="torch CPU threads")
    tr.add_argument("--max-minutes", type=float, default=c("max_minutes"),
                    help=f"time budget; stops resumably (exit code {EXIT_BUDGET}), continue with --resume")
    tr.add_argument("--val-fraction", type=float, default=c("val_fraction"))
    tr.add_argument("--seed", type=int, default=c("seed"))
    tr.add_argument("--device", default=c("device"))
    tr.add_argument("--amp", action=argparse.BooleanOptionalAction, default=c("amp"),
                    help="mixed precision: float16 on cuda, bfloat16 on the CPU; by default on "
                         "cuda and on CPUs with bfloat16 units (Intel AMX); --no-amp: float32")
    tr.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    tr.add_argument("--overwrite", action="store_true",
                    help="start again in an --out that holds an earlier run, replacing its "
                         "checkpoint, history and model")
    tr.add_argument("--pretrained", default=None, help="start from this model (fine-tuning)")
    tr.set_defaults(func=run)


def config_from_args(args, diam_mean) -> TrainConfig:
    """The ``TrainConfig`` that the parsed arguments describe."""
    return TrainConfig(
        n_epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer, diam_mean=diam_mean,
        seed=args.seed, device=args.device, max_minutes=args.max_minutes,
        n_images_per_epoch=args.images_per_epoch, warmup_epochs=args.warmup,
        decay_epochs=args.decay, val_every=args.val_every, num_threads=args.threads, amp=args.amp,
        val_fraction=args.val_fraction, size_passes=args.size_passes, size_crop=args.size_crop)


def run(args):
    from cellpose_nb.predict import input_knobs

    model = load_model(args.pretrained, args.device) if args.pretrained else None
    if args.diam_mean is not None and not args.diam_mean > 0:
        raise ValueError(f"--diam-mean must be > 0 pixels; got {args.diam_mean}")
    diam_mean = args.diam_mean or (model.config.diam_mean if model is not None else DIAM_MEAN)
    if model is not None and diam_mean != model.config.diam_mean:
        model = model.with_diam_mean(diam_mean)  # fine-tuning at a new scale
    config = config_from_args(args, diam_mean)
    model_config = ModelConfig(features=tuple(args.features), diam_mean=diam_mean)
    channels, invert = input_knobs(model, None if args.channels is None
                                   else parse_channels(args.channels), parse_invert(args.invert))
    val_names = None
    if args.val_list is not None:
        if not args.val_list.is_file():
            raise FileNotFoundError(f"--val-list {args.val_list} does not exist")
        val_names = args.val_list.read_text().split()
    t0 = time.perf_counter()
    result = train_folder(args.folder, out_dir=args.out, config=config,
                          model=model if model is not None else model_config,
                          input_recipe=InputRecipe(channels=channels, invert=invert),
                          val_names=val_names, resume=args.resume, overwrite=args.overwrite,
                          command=["cellpose-nb"] + sys.argv[1:])
    if not result.completed:
        print(f"stopped by the time budget after {len(result.history)} epochs; "
              f"run again with --resume to continue ({result.out_dir})")
        return EXIT_BUDGET
    print(f"trained in {time.perf_counter() - t0:.0f} s; model saved in {result.model_dir}")
    return 0
