"""Weights for benchmarking: synthetic weights cached on disk as safetensors, and the disk's read speed.

Random weights at the real size stand for the real checkpoints (values change neither FLOPs nor
memory). To time loading as a user's first start would, they are written once with diffusers'
``save_pretrained`` (safetensors) under ``home()/synthetic/<model>/`` and loaded back with
``from_pretrained`` from that local folder. The page cache of those files is dropped before each
load (fsync, then ``posix_fadvise(POSIX_FADV_DONTNEED)``: needs no root, and works for clean pages),
so the load reads the disk. Components that do not fit the free disk space (Qwen-Image's 16.6 GB
text encoder on a 64 GB disk, say) are left out of the cache, in the order text encoder, VAE, then
denoiser, and are built on the device at load time instead; rows name both lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from lightdiff import settings, specs

MANIFEST = "lightdiff-cache.json"
# Cache the components that matter most for load time first.
_PRIORITY = ("unet", "transformer", "vae", "text_encoder")
_BYTES_PER_PARAM = {"float16": 2, "bfloat16": 2, "float32": 4}


def arch_hash(spec) -> str:
    """Changes when the architecture changes (a stale cache or FLOP table is never reused): each weight
    component's class, parameter count and top-level config values. Nested config dicts are left out:
    transformers' config classes edit them in place when a model is built (rope_scaling, say), so they
    would give the same spec two hashes in one process; the parameter count covers what they describe."""
    blob = json.dumps({n: [c.cls, c.params_M, {k: v for k, v in c.config.items() if not isinstance(v, dict)}]
                       for n, c in spec.components.items() if c.has_weights}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def cache_spec(model_id: str, mode: str):
    """The spec whose weights the mode caches: the model itself, or its tiny twin for twin-disk."""
    spec = specs.get(model_id)
    if mode in ("twin", "twin-disk") and not spec.is_twin:
        return specs.get(spec.twin)
    return spec


def cache_dir(model_id: str, mode: str) -> Path:
    spec = cache_spec(model_id, mode)
    suffix = "-twin" if mode in ("twin", "twin-disk") else ""
    return settings.home() / "synthetic" / f"{spec.id}{suffix}"


def cache_dtype(spec, mode: str) -> str:
    return "float32" if mode in ("twin", "twin-disk") else spec.rules.compute_dtype


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_ready(model_id: str, mode: str) -> bool:
    spec = cache_spec(model_id, mode)
    manifest = read_manifest(cache_dir(model_id, mode))
    return bool(manifest) and manifest.get("arch") == arch_hash(spec)


def choose_components(spec, dtype: str, free_bytes: int, margin_bytes: int) -> tuple[list[str], list[str]]:
    """(cached, built at load): the weight components that fit the free disk space, by priority."""
    names = sorted(spec.weight_components(), key=lambda n: _PRIORITY.index(n) if n in _PRIORITY else 99)
    cached, left_out, used = [], [], 0
    for name in names:
        size = int(spec.params_M(name) * 1e6 * _BYTES_PER_PARAM[dtype])
        if used + size + margin_bytes <= free_bytes:
            cached.append(name)
            used += size
        else:
            left_out.append(name)
    return cached, left_out


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.safetensors") if p.is_file())


def drop_page_cache(paths) -> bool:
    """Ask the kernel to forget cached pages of these files, so the next read comes from the disk.

    Hand-written (no library does this): fsync, then posix_fadvise DONTNEED on each file. Returns
    False where the call is unavailable (then a load may be served partly from RAM)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    ok = True
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            ok = False
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def first_read_gbps(folder: Path, size_gb: float = 2.0, chunk_mb: int = 16) -> dict:
    """The disk's sequential read speed, as the first read of a freshly written file.

    Writes size_gb of random bytes, syncs, drops the file from the page cache and reads it once.
    Without root the cache cannot be dropped for certain, so the method is named in the result."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".read-speed-{os.getpid()}.bin"
    chunk = os.urandom(chunk_mb * 2**20)
    n_chunks = max(1, int(size_gb * 1024 / chunk_mb))
    try:
        with path.open("wb") as fh:
            for _ in range(n_chunks):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        dropped = drop_page_cache([path])
        t0 = time.perf_counter()
        total = 0
        with path.open("rb", buffering=0) as fh:
            while True:
                block = fh.read(chunk_mb * 2**20)
                if not block:
                    break
                total += len(block)
        seconds = time.perf_counter() - t0
    finally:
        path.unlink(missing_ok=True)
    return {"disk_read_gbps": round(total / 2**30 / seconds, 3), "disk_read_gb": round(total / 2**30, 3),
            "disk_read_method": "first read of a fresh file after fsync + posix_fadvise(DONTNEED)"
                                + ("" if dropped else " (fadvise unavailable: may be page cache)")}


def prepare(model_id: str, mode: str, device: str = "auto", margin_gb: float = 4.0, log=print) -> dict:
    """Write the cache folder once (atomically: a temporary folder renamed into place). Returns its manifest."""
    import torch

    from lightdiff.runtime import build
    from lightdiff.runtime.device import pick_device

    spec = cache_spec(model_id, mode)
    folder = cache_dir(model_id, mode)
    if is_ready(model_id, mode):
        return read_manifest(folder)
    dtype_name = cache_dtype(spec, mode)
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    cached, left_out = choose_components(spec, dtype_name, free, int(margin_gb * 2**30))
    if not cached:
        raise OSError(f"No component of {spec.id} fits the {free / 2**30:.1f} GB free under {folder.parent}.")
    t0 = time.perf_counter()
    if mode in ("twin", "twin-disk"):
        components = build.build_twin(spec)
    else:
        dev = pick_device(device)  # random values are made fastest on the GPU, then streamed to disk
        dtype = getattr(torch, dtype_name)
        components = build.build_synthetic(spec, dev, dtype, names=[n for n in spec.components
                                                                    if n not in left_out])
    for name in left_out:
        components[name] = None
    pipe = build.assemble(spec, components)
    built_s = time.perf_counter() - t0
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t1 = time.perf_counter()
    pipe.save_pretrained(tmp, safe_serialization=True)
    os.sync()
    written_s = time.perf_counter() - t1
    files = weight_files(tmp)
    manifest = {"model": spec.id, "arch": arch_hash(spec), "dtype": dtype_name, "mode": mode,
                "cached": cached, "built_at_load": left_out,
                "bytes": sum(p.stat().st_size for p in files), "build_s": round(built_s, 2),
                "write_s": round(written_s, 2), "free_disk_gb": round(free / 2**30, 1)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log(f"cached {spec.id} ({', '.join(cached)}; {manifest['bytes'] / 2**30:.2f} GB) in {folder} "
        f"(built {built_s:.1f} s, written {written_s:.1f} s)" + (f"; built at load: {', '.join(left_out)}"
                                                                   if left_out else ""))
    del pipe, components
    return manifest


def main(argv: list[str] | None = None) -> int:
    """python -m lightdiff.bench.weights MODEL MODE [DEVICE]: prepare one cache (the runner calls this)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    model, mode = args[0], args[1]
    device = args[2] if len(args) > 2 else "auto"
    manifest = prepare(model, mode, device)
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
