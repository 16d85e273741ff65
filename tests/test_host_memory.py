"""Freed host tensors go back to the system after a model is placed (runtime/host_memory.py)."""

import gc

import psutil
import pytest
import torch

from lightdiff.runtime import host_memory

MB = 2**20


def _rss() -> int:
    return psutil.Process().memory_info().rss


@pytest.mark.skipif(host_memory._libc() is None, reason="needs glibc's malloc_trim")
def test_tensors_freed_while_loading_leave_the_resident_set():
    # as placing a model does: tens-of-MB tensors made and dropped one after another, a later one still alive, so
    # glibc cannot shrink its heap from the top and keeps the freed ones resident until trimmed
    torch.empty(18 * MB, dtype=torch.uint8).fill_(1)  # a freed 18 MB block raises glibc's mmap threshold past it
    before = _rss()
    made = [torch.empty(18 * MB, dtype=torch.uint8).fill_(1) for _ in range(60)]  # about 1 GiB
    last = made[-1]
    del made
    gc.collect()
    assert host_memory.release_freed()
    assert _rss() - before < 200 * MB, f"{(_rss() - before) / MB:.0f} MB still resident of the 1080 MB freed"
    assert last.sum().item() == 18 * MB  # what is still referenced is untouched
