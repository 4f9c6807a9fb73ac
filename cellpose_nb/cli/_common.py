"""Argument parsing shared by the sub-commands: channels, inversion, model names, defaults."""

from __future__ import annotations

import inspect
from pathlib import Path

INVERT_CHOICES = ("yes", "no", "auto")


def parse_invert(value):
    """``--invert`` value -> ``segment``'s ``invert``.

    Examples
    --------
    >>> [parse_invert(v) for v in (None, "yes", "no", "auto")]
    [None, True, False, 'auto']
    """
    return {None: None, "yes": True, "no": False, "auto": "auto"}[value]


def parse_channels(pair):
    """``["0", "none"]`` -> ``(0, None)``; ``"gray"`` stays a string.

    Examples
    --------
    >>> parse_channels(["1", "none"]), parse_channels(["gray", "2"])
    ((1, None), ('gray', 2))
    """
    out = []
    for c in pair:
        c = str(c).lower()
        if c in ("none", "-1", ""):
            out.append(None)
        elif c == "gray":
            out.append("gray")
        else:
            try:
                out.append(int(c))
            except ValueError:
                raise ValueError(f"channel must be an index, 'none' or 'gray'; got {c!r}") from None
    return tuple(out)


def add_channel_options(parser, *, default_help):
    """``--channels CYTO NUCLEI`` and ``--invert [yes|no|auto]``, as segment and train share them."""
    parser.add_argument("--channels", nargs=2, default=None, metavar=("CYTO", "NUCLEI"),
                        help="channel index of the cytoplasm (or only) channel and of the nuclei; "
                             "'none' for no nuclear channel, 'gray' for RGB luminance "
                             f"(default: {default_help}, else 0 none)")
    parser.add_argument("--invert", nargs="?", const="yes", default=None, choices=INVERT_CHOICES,
                        help="invert the first channel (dark objects on a light background); "
                             f"'auto' guesses per image (default: {default_help}, else no)")


def default_of(func, name):
    """The default of keyword ``name`` in ``func``'s signature (so the CLI never restates it).

    Examples
    --------
    >>> def f(x, *, k=3): ...
    >>> default_of(f, "k")
    3
    """
    return inspect.signature(func).parameters[name].default


def field_default(config_class, name):
    """The default of field ``name`` of a config dataclass (so the CLI never restates it).

    Examples
    --------
    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class C:
    ...     k: int = 3
    >>> field_default(C, "k")
    3
    """
    return config_class.__dataclass_fields__[name].default


def load_model(spec, device):
    """``nuclei`` (shipped), a model folder, or ``cellpose:NAME`` -> a model."""
    from cellpose_nb import model as M

    if spec.startswith("cellpose:"):
        return M.load_cellpose_weights(spec.split(":", 1)[1], device=device)
    if Path(spec).is_file():
        raise ValueError(f"--model {spec} is a file; give a model folder (with config.json and "
                         f"weights.safetensors), a shipped model's name, or cellpose:NAME")
    if Path(spec).exists():
        return M.load(spec, device=device)
    return M.load_pretrained(spec, device=device)
