"""Compiled functions kept on disk, so a second process skips Dynamo's tracing; and a call replayed as a CUDA graph.

A warm-cache start of SD1.5's compiled graph loop spent 7.5-10.5 s of its 14-20 s in Dynamo's bytecode tracing
(H100 hosts, 2026-11-27, ``compile_stats``): Inductor's and AOTAutograd's caches skip code generation, not
tracing. torch.compile's AOT compile (``aot_compile``, ``torch.compiler.load_compiled_function``) traces once
and saves the traced function with Inductor's code; a later process loads and calls it without tracing.

Guards: only tensor guards (shape, dtype, strides, device) are kept, since guards on Python objects cannot be
saved. Everything else the trace depended on (the model's config, its attention processors, its memory format,
the torch build and the GPU) goes into the artifact's key instead; a loaded function whose tensor guards fail is
compiled anew. The API is experimental in torch: any failure raises ``PrecompileFailed``, and callers fall back
to torch.compile.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lightdiff import settings


class PrecompileFailed(RuntimeError):
    """The AOT compile, its save or its load did not work in this torch build; use torch.compile instead."""


def cache_dir() -> Path:
    return settings.home() / "precompiled"


def artifact_key(name: str, args: tuple, extra: dict) -> str:
    """A file name for ``name`` compiled for these arguments' tensors (shape, dtype, strides, device) and ``extra``
    (whatever else the trace depended on), on this torch build and device."""
    import torch

    def sig(a):
        if isinstance(a, torch.Tensor):
            return ["tensor", list(a.shape), str(a.dtype), list(a.stride()), a.device.type]
        if isinstance(a, torch.nn.Module):
            return ["module", type(a).__name__]
        return ["value", repr(a)]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    blob = json.dumps({"name": name, "args": [sig(a) for a in args], "extra": extra, "torch": torch.__version__,
                       "device": device}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _tensor_guards_only(entries):
    """Keep the guards on tensors (shape, dtype, strides, device; not on parameters, whose values the compiled code
    reads as inputs) and on the relations between dynamic sizes: guards on Python objects cannot be saved (the key
    stands for them)."""
    import torch

    keep = getattr(torch.compiler, "keep_tensor_guards_unsafe", None)
    tensors = keep(entries) if keep is not None else [e.guard_type == "TENSOR_MATCH" for e in entries]
    return [kept or e.guard_type == "SHAPE_ENV" for kept, e in zip(tensors, entries)]


def _marked_for_tracing(args: tuple, dynamic) -> tuple:
    """``args`` with the tensors that ``dynamic`` names ((index path, dim) pairs: ``((5, 1), 0)`` is dim 0 of
    ``args[5][1]``) replaced by copies marked dynamic in that dim. Copies: a tensor that keeps the mark fails the
    loaded function's guards later (a marking absent when it was traced), so callers' tensors stay unmarked."""
    import torch

    def copy(value, path, dims):
        if not path:
            value = value.detach().clone()
            for dim in dims:
                torch._dynamo.mark_dynamic(value, dim)
            return value
        items = list(value)
        items[path[0]] = copy(items[path[0]], path[1:], dims)
        return type(value)(items)

    by_path: dict[tuple, list[int]] = {}
    for path, dim in dynamic:
        by_path.setdefault(tuple(path), []).append(dim)
    for path, dims in by_path.items():
        args = copy(args, path, dims)
    return args


def load_or_compile(fn, args: tuple, key: str, directory: Path | None = None, dynamic=()):
    """``fn`` compiled (fullgraph) for ``args``: loaded from ``<directory>/<key>.bin`` when a check call with
    ``args`` passes its guards, else traced, compiled and saved there. Returns (callable, "loaded" or "compiled").
    ``dynamic`` lists the sizes that may vary between calls ((index path, dim) pairs, as ``_marked_for_tracing``
    reads them): one artifact serves every such size; the key must then not depend on them. The file is written
    atomically; a stale or unreadable one is replaced."""
    import torch

    path = (directory or cache_dir()) / f"{key}.bin"
    if not hasattr(torch.compiler, "load_compiled_function"):
        raise PrecompileFailed(f"torch {torch.__version__} has no torch.compiler.load_compiled_function")
    if path.exists():
        try:
            with open(path, "rb") as f:
                loaded = torch.compiler.load_compiled_function(f)
            check = getattr(loaded, "guard_check", None)  # absent in some torch builds: the key stands for it
            if check is None or check(*args):
                return loaded, "loaded"
        except Exception:  # an artifact from another build, or unreadable: compile anew below
            pass
    try:
        # torch 2.11 has the API behind this flag (off by default); later builds have it on. Without automatic
        # dynamic shapes: Dynamo otherwise makes every size that changed since the function's last trace dynamic,
        # so the third image size's artifact got symbolic image sizes (whose stride guards then failed on its own
        # inputs: qwen-image-2512 at 512 after 1024 and 768 ran its blocks uncompiled, 7.2 s per image instead of
        # about 1.3, H100, 2026-11-28; 1.312 s with this); the key already stands for every size not in ``dynamic``
        with torch._dynamo.config.patch(enable_aot_compile=True, automatic_dynamic_shapes=False):
            compiled = torch.compile(fn, fullgraph=True, options={"guard_filter_fn": _tensor_guards_only})
            aot = compiled.aot_compile((_marked_for_tracing(args, dynamic), {}))
        check = getattr(aot, "guard_check", None)
        if check is not None and not check(*args):
            raise RuntimeError("the compiled function's guards reject the arguments it was traced for")
        path.parent.mkdir(parents=True, exist_ok=True)
        aot.save_compiled_function(str(path))
    except Exception as e:
        raise PrecompileFailed(f"AOT compile of {key} failed: {type(e).__name__}: {e}"[:600]) from e
    return aot, "compiled"


class GraphedCall:
    """``fn(*args)`` captured once as a CUDA graph: each call copies its tensor arguments into the captured
    inputs, replays, and returns the captured output, which the next call overwrites (copy what must outlive
    it). Non-tensor arguments (a module) must be the same objects every call. The graph keeps its own memory pool,
    or shares ``pool`` (``torch.cuda.graph_pool_handle()``) with graphs that never run at the same time."""

    def __init__(self, fn, args: tuple, pool=None):
        import torch

        self.inputs = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the capture: lazy initialisation, library workspaces
            for _ in range(2):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = fn(*self.inputs)

    def __call__(self, *args):
        import torch

        for dst, src in zip(self.inputs, args):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        self.graph.replay()
        return self.output
