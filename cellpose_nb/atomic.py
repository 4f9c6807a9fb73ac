"""Files written whole or not at all: temporaries first, then renames.

Every writer of the package goes through :func:`write_files` (or
:func:`write_file` for one file).  Each file is first written to a temporary
``.<stem>.<8 random characters>.part<suffix>`` in its own folder, which is
renamed over the target only when complete, so an interrupted or failed run
(a full disk, Ctrl-C, SIGTERM) leaves either the old file or the new one,
never half of one, and a set of files is all or nothing.  An existing target
is refused unless ``overwrite``; an error while writing is an OSError that
names the file and its folder; files get the mode the umask gives any new
file (not ``mkstemp``'s 0600).

Standard library only: the bottom of the package's layers.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["write_file", "write_files", "write_bytes", "stale_temporaries", "reworded"]

#: a temporary of ours: ``.<stem>.<mkstemp's 8 random characters>.part<suffix>``
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[a-z0-9_]{8}\.part(?P<suffix>(\.[^.]*)?)")


def _refuse_existing(paths, overwrite):
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist{'s' if len(existing) == 1 else ''}; "
                              "pass overwrite=True to replace")


def _umasked_mode() -> int:
    """0666 minus the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def reworded(exc: OSError, what: str) -> OSError:
    """The OSError ``exc`` again (same errno, so the same subclass) as ``<what>: <reason>``.

    A library's own message often names no file ("No space left on device") or
    our temporary; the user needs the target.
    """
    message = f"{what}: {exc.strerror or exc}"
    return OSError(exc.errno, message) if exc.errno else OSError(message)


def _named(exc: OSError, path: Path) -> OSError:
    return reworded(exc, f"cannot write {path.name} in {path.parent}")


def _stage(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a new temporary file next to ``path``; return the temporary."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                   suffix=f".part{path.suffix}")
    except OSError as exc:
        raise _named(exc, path) from exc
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, _umasked_mode())  # mkstemp makes 0600; results should read like any file
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _named(exc, path) from exc
        raise
    return tmp


def write_files(jobs: Mapping, *, overwrite: bool = False, before_rename=None) -> list[Path]:
    """Write the files of ``jobs`` ({path: write(tmp)}) all or none.

    Every path is checked first, then every file is written to a temporary,
    then ``before_rename({path: temporary})`` is called (if given; e.g. to note
    that the files are about to appear), then the temporaries are renamed.  On
    any failure, an interrupt included, the temporaries and the files renamed
    so far are removed.  (With ``overwrite``, a file replaced before the failure
    is then gone: renames in one folder fail only on an interrupt in between.)
    """
    jobs = {Path(p): write for p, write in jobs.items()}
    _refuse_existing(jobs, overwrite)
    staged, renamed = {}, []
    try:
        for path, write in jobs.items():
            staged[path] = _stage(path, write)
        if before_rename is not None:
            before_rename(dict(staged))
        for path, tmp in staged.items():
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _named(exc, path) from exc
            renamed.append(path)
    except BaseException:
        for p in [*staged.values(), *renamed]:
            p.unlink(missing_ok=True)
        raise
    return list(jobs)


def write_file(path, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Run ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_file(f"{tmp}/a.txt", lambda t: t.write_text("hi"))
    ...     p.read_text(), sorted(q.name for q in p.parent.iterdir())
    ('hi', ['a.txt'])
    """
    return write_files({path: write}, overwrite=overwrite)[0]


def write_bytes(path, data: bytes, *, overwrite: bool = False) -> Path:
    """:func:`write_file` of ``data``."""
    return write_file(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def stale_temporaries(folder, names) -> list[Path]:
    """The temporaries of files ``names`` in ``folder`` that an interrupted write left.

    Only files named as this module names its temporaries
    (``.<stem>.<8 random characters>.part<suffix>``) of one of ``names``, and
    only in ``folder`` itself; nothing is removed here.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for f in (".a_seg.k2x9_q0z.part.npy", ".a_seg.npy", "a_seg.k2x9_q0z.part.npy"):
    ...         _ = open(f"{tmp}/{f}", "wb").close()
    ...     [p.name for p in stale_temporaries(tmp, ["a_seg.npy"])]
    ['.a_seg.k2x9_q0z.part.npy']
    """
    names = set(names)
    found = []
    for p in Path(folder).iterdir():
        m = _TEMPORARY.fullmatch(p.name)
        if m and m["stem"] + m["suffix"] in names and p.is_file():
            found.append(p)
    return sorted(found)
