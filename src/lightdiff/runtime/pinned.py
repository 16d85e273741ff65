"""Pinned host memory for streamed weights: one exact-size buffer per module, page-locked in place.

diffusers' group offloading pins every parameter with ``Tensor.pin_memory()``. torch's caching host allocator
rounds each block up to a power of two and page-locks as it allocates, one tensor after another. Measured on
716 tensors shaped as Qwen-Image's text encoder (16.49 GB, tools/pin_bench.py, H100 host, 2026-11-27): 21.6 and
22.6 s, and 31.25 GB pinned (x1.9); in qwen-image-2512's load under 24 GB it was 14.2 s of 22-31 s (cProfile).
Here a module's parameters and buffers are copied into one buffer of their own size (1.51 s for the same
tensors), which is registered with the CUDA driver (``cudaHostRegister``, in 1 GB runs of whole tensors on
threads: 0.92 s) and becomes their storage. A parameter that is already pinned is returned as it is by
``pin_memory()``, so group offloading then streams from this buffer without a copy of its own.

On by default (``LIGHTDIFF_PIN_IN_PLACE=0`` turns it off). End to end on an H100 (2026-11-28,
docs/benchmarks/2026-11-28-h100): the same tensors ready in 2.86 s against 14.17 s, streamed at the same rate
(39.3 against 37.5 GB/s), process RSS 16.6 against 30.4 GB; qwen-image-2512 under 24 GB loaded in 12.81 s against
22.35 s, host RSS 26.9 against 40.8 GiB, 4.30 s per image either way. Two earlier GPU runs failed and were fixed:
a copy spanning two registrations (cudaErrorInvalidValue; now each registration is a run of whole tensors), and
``is_pinned()`` false (it asks the driver about the storage's first byte, which lay before the first registered
page; the first run now starts at the allocation itself), so diffusers had pinned a second copy.
"""

from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor

PAGE = 4096  # bytes: each tensor starts on a page of its own, so a registered range never splits a tensor or a page
CHUNK_BYTES = 1 << 30  # consecutive tensors registered per call (at least this much), so registration uses threads


class HostBuffer:
    """One pageable uint8 buffer holding a module's host tensors (``nbytes`` from ``start``), each starting on a
    page boundary, and the ranges ``register`` page-locks (``chunks``: (offset, length), each a run of whole
    tensors ending on a page boundary: a copy that spans two registrations fails with cudaErrorInvalidValue,
    H100, 2026-11-27). The first chunk starts at the allocation itself: torch's ``is_pinned()`` asks the driver
    about a tensor's storage base, which every view shares, and diffusers pins again whatever is not pinned."""

    def __init__(self, raw, start: int, nbytes: int, chunks: list[tuple[int, int]]):
        self.raw, self.start, self.nbytes, self.chunks = raw, start, nbytes, chunks

    def holds(self, tensor) -> bool:
        lo = self.raw.data_ptr() + self.start
        return lo <= tensor.data_ptr() < lo + self.nbytes


def _host_tensors(module) -> list:
    """The module's parameters and buffers in host RAM, each once (a tied weight once)."""
    seen, out = set(), []
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "cpu" or id(t) in seen or t.numel() == 0:
            continue
        seen.add(id(t))
        out.append(t)
    return out


def consolidate(module) -> HostBuffer | None:
    """Copy the module's host parameters and buffers into one buffer of their total size (each rounded up to a
    page) and make each a view into it; values and shapes are unchanged. Returns the buffer, or None if there was
    nothing to move. The buffer stays pageable: ``register`` pins it."""
    import torch

    tensors = _host_tensors(module)
    if not tensors:
        return None
    offsets, chunks, total, chunk_start = [], [], 0, 0
    for t in tensors:
        if total - chunk_start >= CHUNK_BYTES:
            chunks.append((chunk_start, total - chunk_start))
            chunk_start = total
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // PAGE) * PAGE
    chunks.append((chunk_start, total - chunk_start))
    raw = torch.empty(total + PAGE, dtype=torch.uint8)
    start = -raw.data_ptr() % PAGE  # the first page boundary inside the allocation
    for t, off in zip(tensors, offsets):
        nbytes = t.numel() * t.element_size()
        at = start + off
        view = raw[at:at + nbytes].view(t.dtype).view(t.shape)
        view.copy_(t)
        t.data = view  # the Parameter object stays (hooks and optimisers hold it); its storage is the buffer
    chunks = [(start + off, n) for off, n in chunks]
    chunks[0] = (0, start + chunks[0][1])
    return HostBuffer(raw, start, total, chunks)


def _cudart():
    import torch

    return torch.cuda.cudart()


def register(buf: HostBuffer, threads: int = 8) -> list[int]:
    """Page-lock ``buf``'s chunks with the CUDA driver on ``threads`` threads. Returns the registered addresses
    (for ``unregister``); raises RuntimeError naming the CUDA error if any chunk fails, with the chunks registered
    before it released."""
    cudart = _cudart()
    base = buf.raw.data_ptr()

    def one(chunk):
        off, n = chunk
        return base + off, int(cudart.cudaHostRegister(base + off, n, 0))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(one, buf.chunks))
    done = [ptr for ptr, err in results if err == 0]
    failed = [err for _, err in results if err != 0]
    if failed:
        unregister(done)
        raise RuntimeError(f"cudaHostRegister failed with CUDA error {failed[0]} for {len(failed)} of "
                           f"{len(buf.chunks)} chunks of a {buf.nbytes / 2**30:.2f} GiB buffer")
    return done


def unregister(ptrs: list[int]) -> None:
    cudart = _cudart()
    for ptr in ptrs:
        cudart.cudaHostUnregister(ptr)


def _release(ptrs: list[int], buf) -> None:
    unregister(ptrs)


def enabled() -> bool:
    """Whether the placement code pins in place (the default; ``LIGHTDIFF_PIN_IN_PLACE=0`` turns it off)."""
    from lightdiff import settings

    return settings.flag("pin_in_place")


def pin_module(module, owner=None, threads: int = 8) -> dict:
    """Move the module's host parameters and buffers into one pinned buffer (``consolidate``, then ``register``);
    the registration is released when ``owner`` (default: the module; pass the model when ``module`` is a
    temporary container of some of its blocks) is garbage-collected. Returns what it did: ``{"pinned_bytes": n}``
    or ``{"skipped": why}`` (no CUDA, nothing to pin, or the driver refused, in which case the tensors stay in the
    pageable buffer and group offloading pins them itself, as before)."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    buf = consolidate(module)
    if buf is None:
        return {"skipped": "nothing in host RAM to pin"}
    try:
        ptrs = register(buf, threads)
    except RuntimeError as e:
        return {"skipped": str(e)}
    if not buf.raw.is_pinned():  # a torch that asks something other than the driver: let diffusers pin
        unregister(ptrs)
        return {"skipped": "torch does not see the registered buffer as pinned"}
    try:  # one asynchronous copy out of each registered run, as group offloading will make
        for off, n in buf.chunks:
            buf.raw[off:off + min(n, PAGE)].to("cuda", non_blocking=True)
        torch.cuda.synchronize()
    except RuntimeError as e:
        unregister(ptrs)
        return {"skipped": f"a copy from the registered buffer failed: {e}"[:300]}
    # released with the module; the finalizer holds the buffer, so its pages are unregistered before they are freed
    owner = module if owner is None else owner
    weakref.finalize(owner, _release, ptrs, buf).atexit = False
    owner.__dict__.setdefault("_lightdiff_pinned_buffers", []).append(buf)
    return {"pinned_bytes": buf.nbytes}
