"""cellpose_nb._alloc: large freed blocks are reused while training on the CPU."""

import ctypes
import platform
from unittest import mock

import numpy as np
import pytest

from cellpose_nb import _alloc

glibc_only = pytest.mark.skipif(_alloc._glibc() is None, reason="needs Linux with glibc")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def mapped_bytes_while_holding(nbytes=64 << 20):
    """Growth of glibc's mmap-served bytes (mallinfo2().hblkhd) while a block is held."""
    libc = _alloc._glibc()
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblkhd
    block = np.ones(nbytes, dtype=np.uint8)
    grown = libc.mallinfo2().hblkhd - before
    del block
    return grown


@glibc_only
def test_large_blocks_come_from_the_heap_inside_and_from_mmap_outside():
    size = 64 << 20
    assert mapped_bytes_while_holding(size) >= size  # glibc maps blocks this big (and unmaps them)
    with _alloc.reuse_freed_memory() as active:
        assert active
        assert mapped_bytes_while_holding(size) == 0  # served from (and freed back to) the heap
    assert mapped_bytes_while_holding(size) >= size  # back to glibc's behaviour above 32 MiB


def test_disabled_or_not_glibc_does_nothing():
    with _alloc.reuse_freed_memory(enabled=False) as active:
        assert active is False
    with mock.patch.object(platform, "libc_ver", return_value=("", "")):
        assert _alloc._glibc() is None
        with _alloc.reuse_freed_memory() as active:
            assert active is False


def test_train_reuses_memory_on_the_cpu_only():
    import torch

    from cellpose_nb import train as T
    from cellpose_nb.train import loop
    from cellpose_nb.data import make_synthetic_dataset
    from cellpose_nb.model import CellposeUNet, ModelConfig

    samples = make_synthetic_dataset(2, shape=(64, 64), seed=0, n_cells=6, diameter=12)
    calls = []
    real = _alloc.reuse_freed_memory

    def spy(enabled=True):
        calls.append(enabled)
        return real(enabled)

    torch.manual_seed(0)
    net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=12.0))
    config = T.TrainConfig(n_epochs=1, batch_size=2, crop_size=32, device="cpu", amp=False,
                           min_train_masks=1, warmup_epochs=0)
    with mock.patch.object(loop, "reuse_freed_memory", spy):
        T.train(T.prepare_images([s.image for s in samples]), [s.labels for s in samples], net, config=config,
                progress=False)
    assert calls == [True]
