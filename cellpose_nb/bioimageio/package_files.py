"""Read the files of a bioimage.io package (a zip or a folder) without trusting it.

Nothing is extracted and nothing is written: members are read into memory, at
most :data:`MAX_TOTAL_BYTES` in all.  A zip is refused, naming the member, when
it holds an absolute path, a ``..`` component, a symbolic link, more than
:data:`MAX_MEMBERS` entries or, by its own headers, more than
:data:`MAX_TOTAL_BYTES` once decompressed (``zipfile`` then stops each member at
its declared size and checks its CRC, so a header cannot lie).  In a folder, a
file is read only if it lies inside the folder once links are resolved.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

MAX_TOTAL_BYTES = 2 * 1024 ** 3  # decompressed size of a package we read (Cellpose's: ~60 MB)
MAX_MEMBERS = 10_000  # entries of a package zip
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")  # the description, at the package's top level
MAX_RDF_BYTES = 16 * 1024 ** 2  # an rdf.yaml larger than this is not a description


class PackageFiles:
    """The files of one package: ``read(name) -> bytes``, ``rdf_name``, ``where(name)``.

    Parameters
    ----------
    source : path
        A package zip, a folder holding ``rdf.yaml``, or the ``rdf.yaml`` itself.

    Raises
    ------
    FileNotFoundError
        No such file or folder, or no rdf.yaml in it.
    ValueError
        A zip that is corrupt or breaks one of the rules above.

    Examples
    --------
    >>> import io, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with zipfile.ZipFile(f"{tmp}/p.zip", "w") as z:
    ...         z.writestr("rdf.yaml", "type: model")
    ...     PackageFiles(f"{tmp}/p.zip").read("rdf.yaml")
    b'type: model'
    """

    def __init__(self, source: str | os.PathLike):
        self.source = Path(source)
        if not self.source.exists():
            raise FileNotFoundError(f"bioimage.io package {self.source} does not exist")
        self._zip = None
        if self.source.is_dir():
            self.root = self.source
        elif zipfile.is_zipfile(self.source):
            self._zip = _open_checked_zip(self.source)
            self.root = None
        elif self.source.suffix.lower() in (".yaml", ".yml"):
            self.root = self.source.parent
        else:
            raise ValueError(f"{self.source} is neither a zip file nor an rdf.yaml: not a "
                             f"bioimage.io package (corrupt or another format)")
        names = [self.source.name] if self.root is not None and self.source.is_file() \
            else list(RDF_NAMES)
        self.rdf_name = next((n for n in names if self._has(n)), None)
        if self.rdf_name is None:
            raise FileNotFoundError(f"{self.source} holds no {' or '.join(RDF_NAMES)}: not a "
                                    f"bioimage.io package")

    def where(self, name: str) -> str:
        """``name`` with its package, for error messages."""
        return f"{self.source}:{name}" if self._zip is not None else str(self.root / name)

    def _has(self, name):
        if self._zip is not None:
            return name in self._zip.NameToInfo
        return (self.root / name).is_file()

    def read(self, name: str, *, max_bytes: int = MAX_TOTAL_BYTES) -> bytes:
        """The bytes of the package file ``name`` (a relative POSIX path)."""
        _check_name(name, self.source)
        if self._zip is not None:
            info = self._zip.NameToInfo.get(name)
            if info is None:
                raise FileNotFoundError(f"{self.where(name)}: the package has no such file")
            if info.file_size > max_bytes:
                raise ValueError(f"{self.where(name)} is {info.file_size} bytes, more than "
                                 f"the {max_bytes} this file may have")
            try:
                return self._zip.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise ValueError(f"{self.where(name)} cannot be read (corrupt zip): {err}") from err
        path = self.root / name
        resolved, root = path.resolve(), self.root.resolve()
        if not resolved.is_relative_to(root):
            raise ValueError(f"{path} points outside the package folder {self.root} "
                             f"(to {resolved}); refusing to read it")
        if not resolved.is_file():
            raise FileNotFoundError(f"{path}: the package has no such file")
        if resolved.stat().st_size > max_bytes:
            raise ValueError(f"{path} is {resolved.stat().st_size} bytes, more than the "
                             f"{max_bytes} this file may have")
        return resolved.read_bytes()

    def close(self):
        if self._zip is not None:
            self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (what an rdf's ``sha256`` fields hold)."""
    return hashlib.sha256(data).hexdigest()


def _check_name(name, source):
    """Refuse a member name that is absolute, climbs with ``..`` or uses backslashes."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: a package file name must be a non-empty string; got {name!r}")
    pure = PurePosixPath(name)
    if (pure.is_absolute() or "\\" in name or ".." in pure.parts
            or (len(name) > 1 and name[1] == ":")):
        raise ValueError(f"{source}: unsafe file name {name!r} in the package (absolute or "
                         f"leaving the package); refusing to read it")


def _open_checked_zip(path: Path) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path} is not a readable zip file (corrupt or truncated): {err}") from err
    try:
        if len(infos) > MAX_MEMBERS:
            raise ValueError(f"{path} holds {len(infos)} entries, more than {MAX_MEMBERS}: "
                             f"not a bioimage.io package")
        seen, total = set(), 0
        for info in infos:
            _check_name(info.filename, path)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"{path}: {info.filename!r} is a symbolic link; a package "
                                 f"holds plain files only, refusing it")
            if info.filename in seen:
                raise ValueError(f"{path}: {info.filename!r} appears twice in the zip")
            seen.add(info.filename)
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise ValueError(f"{path} would decompress to {total} bytes, more than "
                             f"{MAX_TOTAL_BYTES}: refusing it (a zip bomb or not a package)")
    except BaseException:
        zf.close()
        raise
    return zf
