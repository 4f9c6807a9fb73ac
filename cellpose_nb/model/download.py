"""Cellpose's official weight files: where they are cached, downloading, checksums.

Needs neither torch nor the network: it only finds, fetches and verifies files.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

CELLPOSE_MODEL_URL = "https://www.cellpose.org/models"  # as cellpose.models._MODEL_URL
# model name -> file name on the Cellpose server (cellpose.models.model_path)
CELLPOSE_FILES = {
    "cyto3": "cyto3",
    "cyto2": "cyto2torch_0",
    "cyto": "cytotorch_0",
    "nuclei": "nucleitorch_0",
}
# file name -> SHA-256 hex digest; only digests checked against a real download belong
# here.  Without an entry nothing is verified.
KNOWN_SHA256: dict[str, str] = {}


def cache_dir() -> Path:
    """Where downloaded weights go: ``$CELLPOSE_NB_CACHE`` or ``~/.cellpose_nb/models``.

    Examples
    --------
    >>> cache_dir().name
    'models'
    """
    env = os.environ.get("CELLPOSE_NB_CACHE")
    return Path(env) if env else Path.home() / ".cellpose_nb" / "models"


def _cellpose_dir() -> Path:
    """Where cellpose keeps weights: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ~/.cellpose/models."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def _sidecar(path: Path) -> Path:
    """``<file>.sha256``: the digest of a downloaded file, written next to it."""
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_cached(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """Check a cached weight file against ``sha256``, else against its ``.sha256`` sidecar.

    The sidecar is written by :func:`download_weights`, so a file that was
    truncated or changed after its download is caught before it is loaded.
    A file with neither (copied by hand) is accepted as it is.

    Raises
    ------
    ValueError
        The digest differs; the message names the file.  Nothing is deleted.
    """
    path = Path(path)
    expected, source = sha256, "the published digest"
    if expected is None and _sidecar(path).is_file():
        expected = (_sidecar(path).read_text().split() or ["(empty)"])[0]
        source = f"{_sidecar(path).name}, written when it was downloaded"
    if expected is not None and _file_sha256(path) != expected.lower():
        raise ValueError(f"{path} does not match {source} (sha256 {expected}): the file is "
                         f"corrupt or was changed. Delete it (and {_sidecar(path).name}) to "
                         "download it again")
    return path


def download_weights(url: str, path: str | os.PathLike, *, sha256: str | None = None,
                     timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` (via a ``.part`` file), checking SHA-256 if given.

    The digest of what was downloaded is written to ``<path>.sha256``, which
    :func:`verify_cached` checks each time the cached file is used.  A
    progress bar (tqdm) shows the bytes received.

    Raises
    ------
    ConnectionError
        The download failed (no network, server error); names the URL and ``path``.
    ValueError
        The checksum differs; the file is not kept.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            headers = getattr(response, "headers", None)
            size = int(headers.get("Content-Length") or 0) if headers is not None else 0
            with tqdm(total=size or None, unit="B", unit_scale=True, leave=False,
                      desc=f"downloading {path.name}", disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as err:  # URLError, HTTPError, timeouts are OSErrors
        part.unlink(missing_ok=True)
        raise ConnectionError(
            f"could not download {url} to {path}: {err}. This needs network access; "
            f"without it, copy the file to {path} by hand (or set CELLPOSE_NB_CACHE to a "
            f"folder that holds it)") from err
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        part.unlink()
        raise ValueError(f"checksum mismatch for {url}: expected sha256 {sha256}, got "
                         f"{digest.hexdigest()}; the download was discarded")
    part.replace(path)
    _sidecar(path).write_text(f"{digest.hexdigest()}  {path.name}\n")
    return path


def find_cellpose_weights(name: str, *, download: bool = True) -> Path:
    """Path of the official Cellpose weights ``name`` (``cyto3``, ``cyto2``, ``cyto``, ``nuclei``).

    Looks in :func:`cache_dir`, then in cellpose's own folder (``~/.cellpose/models``);
    otherwise downloads from ``CELLPOSE_MODEL_URL`` into :func:`cache_dir`.
    """
    if name not in CELLPOSE_FILES:
        raise ValueError(f"unknown Cellpose model {name!r}; expected one of {list(CELLPOSE_FILES)}")
    filename = CELLPOSE_FILES[name]
    for folder in (cache_dir(), _cellpose_dir()):
        if (folder / filename).is_file():
            return verify_cached(folder / filename, KNOWN_SHA256.get(filename))
    target = cache_dir() / filename
    if not download:
        raise FileNotFoundError(f"Cellpose weights {name!r} not found in {cache_dir()} or "
                                f"{_cellpose_dir()}")
    return download_weights(f"{CELLPOSE_MODEL_URL}/{filename}", target,
                            sha256=KNOWN_SHA256.get(filename))
