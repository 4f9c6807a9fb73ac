"""Keep large freed blocks in the process heap while a CPU training run lasts.

Why: every training step allocates the same few hundred activation tensors of
up to tens of MB and frees them again.  glibc's ``malloc`` serves blocks above
its *mmap threshold* (at most 32 MiB, usually less) with fresh ``mmap`` calls
and returns them to the kernel on ``free``, so every step page-faults and
zeroes hundreds of MB anew.  Raising the threshold (``mallopt(M_MMAP_THRESHOLD)``)
makes ``malloc`` reuse freed heap memory instead (the same setting as
``MALLOC_MMAP_THRESHOLD_`` in the environment): fewer page faults and faster
steps, at the price of a higher resident size while training.  Intel's
PyTorch tuning guide gets the same effect by preloading jemalloc or tcmalloc.

:func:`reuse_freed_memory` sets the threshold on entry and, on exit, sets it to
32 MiB (where glibc's own adaptive threshold ends after large frees) and
returns the heap's free memory to the kernel (``malloc_trim``).  Elsewhere
than glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
TRAINING_MMAP_THRESHOLD = 1 << 30  # 1 GiB: every activation of a CPU training step
GLIBC_MAX_ADAPTIVE_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc


def _glibc():
    """The C library if it is glibc with ``mallopt``, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def _set(libc, mmap_threshold: int, trim_threshold: int) -> bool:
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
                and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True):
    """Inside the block, large allocations reuse freed heap memory (glibc only).

    Yields True when the setting took effect, False when it did not (not glibc,
    or ``enabled=False``).  Process-wide while it lasts: other threads'
    allocations are served the same way.

    Examples
    --------
    >>> with reuse_freed_memory(enabled=False) as active:
    ...     active
    False
    """
    libc = _glibc() if enabled else None
    active = libc is not None and _set(libc, TRAINING_MMAP_THRESHOLD, 2 * TRAINING_MMAP_THRESHOLD)
    try:
        yield active
    finally:
        if active:
            _set(libc, GLIBC_MAX_ADAPTIVE_THRESHOLD, 2 * GLIBC_MAX_ADAPTIVE_THRESHOLD)
            libc.malloc_trim(0)
