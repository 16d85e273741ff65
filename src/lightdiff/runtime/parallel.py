"""One image split over N GPUs of one host: diffusers' context parallelism (Qwen-Image).

`lightdiff generate --context-parallel N [--cp-mode ulysses|ring]` starts N processes (spawned here, one
per GPU, NCCL). Each loads the whole model onto its own cuda:rank, has diffusers split the transformer
(``enable_parallelism`` with a ContextParallelConfig: the image and text tokens are divided among the ranks,
attention exchanges them by all-to-all (Ulysses) or passes K/V around a ring, and the output projection
gathers them back) and runs the same request with the same seed. Every rank ends with the same latents;
rank 0 alone writes the images.

It buys the latency of one image. Every rank holds all the weights, so it needs N times the memory and
gives no throughput over `lightdiff batch --devices` (one image per GPU, nothing exchanged).

Choices:
- diffusers' plain split needs every token sequence (image, prompt, negative prompt) and, for Ulysses,
  the heads to divide by N. A prompt's token count rarely does, so each rank encodes the request's
  prompts once after loading and takes diffusers' "anything" variant when something does not divide:
  uneven splits and one size exchange per attention, same result.
- Memory plans, the OOM back-off and the fast path stay off: a rank that reloaded a model or split its
  batch alone would leave the others waiting in a collective. Ranks run resident; an error in one stops all.
- Ring attention needs each block's log-sum-exp, which diffusers takes from torch's flash kernel
  (``_native_flash``): CUDA only.
- ``--device cpu`` runs the ranks as CPU processes over gloo (Ulysses only). It is slower than one
  process and exists so tests can check that N ranks make the 1-process image.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
import time
from dataclasses import dataclass

from lightdiff import settings, specs
from lightdiff.errors import InvalidRequest, LightdiffError

MODES = ("ulysses", "ring")
FIELD = "context_parallel"


@dataclass(frozen=True)
class Launch:
    degree: int
    mode: str
    device_type: str  # "cuda" or "cpu"

    @property
    def backend(self) -> str:
        return "nccl" if self.device_type == "cuda" else "gloo"

    def device(self, rank: int) -> str:
        return f"cuda:{rank}" if self.device_type == "cuda" else "cpu"

    def devices(self) -> list[str]:
        return [self.device(r) for r in range(self.degree)]


# --- checks before any process starts ----------------------------------------------------------


def denoiser_name(spec) -> str:
    return "transformer" if "transformer" in spec.components else "unet"


def uneven_heads_fit(heads: int, degree: int) -> bool:
    """diffusers' Ulysses "anything" pads the heads up to a multiple of N, and asserts the padding is
    less than one rank's share of the padded heads."""
    pad = -heads % degree
    return pad < (heads + pad) // degree


def ulysses_degrees(heads: int, limit: int = 16) -> list[int]:
    return [n for n in range(2, min(heads, limit) + 1) if heads % n == 0 or uneven_heads_fit(heads, n)]


def check(model: str, degree: int, mode: str = "ulysses", device: str | None = None, plan: str = "auto",
          vram_budget_gb: float | None = None) -> Launch:
    """Everything that can be refused before N processes start; returns how to launch them."""
    from lightdiff.runtime.build import component_class

    spec = specs.get(model)
    if degree is None or degree < 2:
        raise InvalidRequest(FIELD, f"--context-parallel {degree} splits nothing: it needs 2 or more GPUs.",
                             "Leave --context-parallel out to run on one device, or give e.g. --context-parallel 2.")
    if mode not in MODES:
        raise InvalidRequest("cp_mode", f"Unknown context-parallel mode {mode!r}.", "Use --cp-mode ulysses or ring.")
    name = denoiser_name(spec)
    cls = component_class(spec.components[name])
    if getattr(cls, "_cp_plan", None) is None:
        hint = ("For throughput, spread images over GPUs instead: `lightdiff batch jobs.jsonl -o OUT "
                "--devices cuda:0,cuda:1`." if spec.family == "sd15" else
                "Use a qwen-image model, or spread images over GPUs with `lightdiff batch --devices`.")
        raise InvalidRequest(FIELD, f"{spec.id} ({spec.family}) cannot split one image over GPUs: diffusers has no "
                                    f"context-parallel plan for its {name} ({cls.__name__}).", hint)
    if plan not in ("auto", "resident"):
        raise InvalidRequest("plan", f"--plan {plan} cannot be combined with --context-parallel: every rank keeps "
                                     "the whole model resident on its GPU.",
                             "Leave --plan out, or run on one GPU without --context-parallel to use a memory plan.")
    if vram_budget_gb is not None:
        raise InvalidRequest("vram_budget", f"--vram-budget {vram_budget_gb} cannot be combined with "
                                            "--context-parallel: every rank holds all the weights (resident).",
                             "Leave --vram-budget out, or run on one GPU without --context-parallel.")
    heads = spec.components[name].config["num_attention_heads"]
    if mode == "ulysses" and heads % degree and not uneven_heads_fit(heads, degree):
        raise InvalidRequest(FIELD, f"Ulysses splits {spec.id}'s {heads} attention heads over the ranks; "
                                    f"diffusers cannot split {heads} heads {degree} ways.",
                             f"Use --context-parallel {' or '.join(map(str, ulysses_degrees(heads)))}, "
                             "or --cp-mode ring (which splits tokens only).")
    return Launch(degree, mode, _device_type(device, degree, mode))


def _device_type(device: str | None, degree: int, mode: str) -> str:
    import torch

    name = (device or settings.get("device") or "auto").lower()
    if name == "cpu":
        if mode == "ring":
            raise InvalidRequest("device", "Ring attention cannot run on the CPU: diffusers takes each block's "
                                           "log-sum-exp from torch's flash kernel, which is CUDA only.",
                                 "Use --cp-mode ulysses with --device cpu, or run ring on CUDA GPUs.")
        return "cpu"
    if name.startswith("cuda:"):
        raise InvalidRequest("device", f"--device {name} with --context-parallel: the ranks always use cuda:0 .. "
                                       f"cuda:{degree - 1}.",
                             "Use --device cuda (or leave it out) and choose the GPUs with CUDA_VISIBLE_DEVICES=2,3.")
    if name not in ("auto", "cuda"):
        raise InvalidRequest("device", f"--context-parallel cannot run on device {name!r}.",
                             "Use CUDA GPUs (--device cuda), or --device cpu for the gloo test path.")
    if not torch.cuda.is_available():
        raise InvalidRequest("device", f"--context-parallel {degree} needs {degree} CUDA GPUs; none is visible.",
                             "Run without --context-parallel, or add --device cpu to try it on the CPU "
                             "(gloo, slower than one process: for tests).")
    visible = torch.cuda.device_count()
    if degree > visible:
        raise InvalidRequest(FIELD, f"--context-parallel {degree} needs {degree} GPUs; {visible} "
                                    f"{'is' if visible == 1 else 'are'} visible.",
                             f"Use --context-parallel {visible}." if visible >= 2 else
                             "Run without --context-parallel on this machine (or make more GPUs visible).")
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        raise LightdiffError("This torch build has no NCCL, which --context-parallel uses between GPUs.",
                             "Install a CUDA build of torch with distributed support.", code="missing_dependency")
    return "cuda"


# --- inside each rank -------------------------------------------------------------------------


def sequence_lengths(pipe, r, max_tokens: int) -> dict[str, int]:
    """Token counts the transformer splits: the image's, and each prompt's the pipeline encodes on its own
    (the negative prompt too, under true CFG)."""
    per_token = pipe.vae_scale_factor * 2  # VAE downsampling, then 2x2 patches
    out = {"image": (r.height // per_token) * (r.width // per_token)}
    prompts = {"prompt": r.prompt}
    if r.negative_prompt and r.guidance > 1:
        prompts["negative_prompt"] = r.negative_prompt
    for key, text in prompts.items():
        embeds, _ = pipe.encode_prompt(prompt=text, device=pipe._execution_device, num_images_per_prompt=1,
                                       max_sequence_length=max_tokens)
        out[key] = int(embeds.shape[1])
    return out


def split_kind(degree: int, mode: str, heads: int, lengths: dict[str, int]) -> str:
    """"even" (diffusers' plain split) when every sequence and, for Ulysses, the heads divide by N;
    else "uneven" (its "anything" variant)."""
    for what, n in lengths.items():
        if n < degree:
            raise InvalidRequest(FIELD, f"The {what.replace('_', ' ')} is {n} token(s); splitting it {degree} ways "
                                        "leaves a rank without one.",
                                 f"Use --context-parallel {max(2, n)} or less, or a longer {what.replace('_', ' ')}.")
    even = all(n % degree == 0 for n in lengths.values()) and (mode == "ring" or heads % degree == 0)
    return "even" if even else "uneven"


@contextlib.contextmanager
def _cpu_device_count():
    """diffusers picks a rank's device as rank % torch.accelerator.device_count(), which is 0 (a division by
    zero) on a CPU-only torch; the CPU path has one device."""
    import torch

    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def split(loaded, launch: Launch, r) -> dict:
    """Enable diffusers' context parallelism on a loaded pipeline's transformer; what was done, for metadata."""
    import torch
    from diffusers import ContextParallelConfig

    transformer = loaded.pipe.transformer
    lengths = sequence_lengths(loaded.pipe, r, loaded.spec.defaults.max_prompt_tokens)
    kind = split_kind(launch.degree, launch.mode, transformer.config.num_attention_heads, lengths)
    attention = "native"
    if launch.mode == "ring":
        if transformer.dtype not in (torch.float16, torch.bfloat16):
            dtype = str(transformer.dtype).split(".")[-1]
            raise InvalidRequest("cp_mode", f"Ring attention runs torch's flash kernel, which needs bf16 or fp16; "
                                            f"{loaded.spec.id}'s transformer is {dtype} "
                                            f"({loaded.source.describe()} weights).",
                                 "Use --cp-mode ulysses (tiny twins run in float32), or synthetic or real weights.")
        attention = "_native_flash"  # ring needs the log-sum-exp, which plain SDPA does not return
        transformer.set_attention_backend(attention)
    config = ContextParallelConfig(**{f"{launch.mode}_degree": launch.degree,
                                      f"{launch.mode}_anything": kind == "uneven"})
    with _cpu_device_count() if launch.device_type == "cpu" else contextlib.nullcontext():
        transformer.enable_parallelism(config=config)
    return {"degree": launch.degree, "mode": launch.mode, "split": kind, "tokens": lengths,
            "attention": attention, "backend": launch.backend, "devices": launch.devices()}


def _barrier(launch: Launch, rank: int) -> None:
    import torch.distributed as dist

    if launch.device_type == "cuda":
        dist.barrier(device_ids=[rank])
    else:
        dist.barrier()


def _rank_work(rank: int, launch: Launch, request: dict, out_dir: str, runs: int,
               allow_unsafe_pickle: bool | None) -> dict:
    import torch

    from lightdiff.runtime.device import memory_snapshot, sync
    from lightdiff.workflows.base import resolve
    from lightdiff.workflows.engine import Engine

    device = launch.device(rank)
    engine = Engine(device=device, plan="resident", fast="off", max_retries=0, allow_unsafe_pickle=allow_unsafe_pickle)
    _, req = engine.parse(request)
    r = resolve(req, specs.get(req.model))
    info: dict = {}
    load = engine.pool.load_fn

    def load_and_split(spec, weights, **kw):  # any load, first or again, gets the same split on every rank
        loaded = load(spec, weights, **kw)
        info.update(split(loaded, launch, r))
        return loaded

    engine.pool.load_fn = load_and_split
    t0 = time.perf_counter()
    plan, _ = engine.plan_for(request)
    engine.pool.get(req.model, req.weights, plan=plan)
    sync(device)
    load_s = time.perf_counter() - t0
    result, timings = None, []
    for i in range(runs):
        _barrier(launch, rank)  # start together: the first rank to arrive would wait in the first all-to-all
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        res = engine.run(request)
        sync(device)
        timings.append({"run": i + 1, "s": round(time.perf_counter() - t0, 3), **memory_snapshot(device)})
        result = result or res
    out = {"rank": rank, "device": device, "load_s": round(load_s, 3), "timings": timings}
    if rank == 0:
        for meta in result.metadata:
            meta[FIELD] = info
        out.update(paths=engine.save(result, out_dir), metadata=result.metadata, warnings=result.warnings,
                   context_parallel=info)
    return out


def _rank_main(rank: int, launch: Launch, port: int, request: dict, out_dir: str, runs: int,
               allow_unsafe_pickle: bool | None, queue) -> None:
    import os
    import warnings

    import torch
    import torch.distributed as dist

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # diffusers 0.42's gather calls a torch collective torch now calls deprecated, once per rank
    warnings.filterwarnings("ignore", message=".*all_gather_tensor.*deprecated", category=FutureWarning)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # enable_parallelism's "experimental" warning, once per rank
    kw = {}
    if launch.device_type == "cuda":
        torch.cuda.set_device(rank)  # diffusers' size exchanges use the current device
        kw["device_id"] = torch.device("cuda", rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // launch.degree))
    try:
        dist.init_process_group(launch.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=launch.degree, **kw)
        try:
            queue.put(_rank_work(rank, launch, request, out_dir, runs, allow_unsafe_pickle))
        finally:
            dist.destroy_process_group()
    except LightdiffError as e:  # sent whole (code, message, hint); the exit makes the parent stop the others
        queue.put({"rank": rank, "error": e.to_dict()})
        raise SystemExit(1) from None


# --- the launcher ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rebuilt(error: dict) -> LightdiffError:
    """A rank's LightdiffError as the parent raises it; out of memory gets the advice that fits here."""
    hint = error.get("hint", "")
    if error.get("code") == "out_of_memory":
        hint = ("Every rank holds the whole model: use GPUs with more memory or a smaller size, or run on one GPU "
                "without --context-parallel, where memory plans apply.")
    return LightdiffError(error["message"], hint, code=error.get("code"), details=error.get("details"))


def generate(request: dict, degree: int, mode: str = "ulysses", device: str | None = None, out_dir: str = "outputs",
             runs: int = 1, plan: str = "auto", vram_budget_gb: float | None = None,
             allow_unsafe_pickle: bool | None = None, on_start=None) -> dict:
    """Make one request's images split over ``degree`` ranks; rank 0 writes them to ``out_dir``.

    ``on_start(launch)`` runs once every check has passed, before the ranks start. Returns rank 0's paths,
    metadata, warnings and per-run timings, and every rank's timings ("ranks")."""
    import torch.multiprocessing as tmp

    from lightdiff import workflows
    from lightdiff.workflows.base import parse, resolve

    wf = workflows.get(request.get("workflow") or "txt2img")
    req = parse(wf.Request, request)
    resolve(req, specs.get(req.model))  # sizes and scheduler checked before anything starts
    launch = check(req.model, degree, mode, device, plan, vram_budget_gb)
    if runs < 1:
        raise InvalidRequest("runs", f"--runs {runs} must be at least 1.", "Use --runs 3 to time warm runs.")
    request = dict(request)
    if request.get("seed") is None:  # drawn here: every rank must use the same one
        request["seed"] = secrets.randbelow(2**32)
    if on_start is not None:
        on_start(launch)
    ctx = tmp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = tmp.start_processes(_rank_main, nprocs=degree, join=False, start_method="spawn",
                                args=(launch, _free_port(), request, str(out_dir), runs, allow_unsafe_pickle, queue))
    messages: list[dict] = []

    def drain():
        while not queue.empty():
            messages.append(queue.get())

    try:
        while not procs.join(timeout=0.5):  # raises once a rank fails, after stopping the others
            drain()
    except (tmp.ProcessRaisedException, tmp.ProcessExitedException) as e:
        drain()
        errors = [m for m in messages if "error" in m]
        if errors:
            raise _rebuilt(errors[0]["error"]) from None
        print(str(e), file=sys.stderr)  # an unexpected failure: the rank's traceback
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise LightdiffError(f"Rank {e.error_index} of --context-parallel {degree} failed: {last}",
                             "Its traceback is above.", code="context_parallel_failed") from None
    except BaseException:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
        raise
    drain()
    ranks = {m["rank"]: m for m in messages}
    first = ranks[0]
    return {"paths": first["paths"], "metadata": first["metadata"], "warnings": first["warnings"],
            "timings": first["timings"], "load_s": first["load_s"], "context_parallel": first["context_parallel"],
            "ranks": [{k: ranks[i][k] for k in ("rank", "device", "load_s", "timings")} for i in sorted(ranks)]}
