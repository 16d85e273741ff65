"""batch: many images from many prompts and/or seeds, in chunks, surviving out-of-memory errors.

Which images: for each prompt (``prompts``, or the one ``prompt``), ``count`` images with seeds
seed, seed+1, ... (or exactly the listed ``seeds``). Every prompt gets the same seeds, so a prompt
list compares prompts on equal noise. Images are numbered prompt by prompt (``index``).

How: chunks of up to ``batch_size`` images with the same prompt and consecutive seeds run as one
txt2img call; each image is handed to ``on_image(image, meta)`` as soon as its chunk finishes (to
save it at once) and collected in the result.

Out of memory (torch.OutOfMemoryError, or lightdiff's OutOfMemory): the chunk is retried at half
its size (rounded up), down to 1, and later chunks keep the smaller size. If a single image still
does not fit, it and every image after it are listed in ``result.missing`` with the reason; the
images made are returned. If none was made the error is raised. Each image's metadata lists the fallbacks in
effect when it was made (``fallbacks``); result.warnings says the same in words.

Each image's metadata ``request`` is the txt2img request that makes it alone (its own seed, batch
1): ``lightdiff run --from`` reproduces it (batched matrix products may round a pixel level or two
differently from a batch of one).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Annotated, Callable, Literal

from pydantic import Field

from lightdiff.errors import InvalidRequest, OutOfMemory
from lightdiff.workflows import txt2img
from lightdiff.workflows.base import BaseRequest, GenerationResult, Timer, parse, resolve

NAME = "batch"
MAX_IMAGES = 10000
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Prompt = Annotated[str, Field(max_length=20000)]


class Request(BaseRequest):
    """count images for each prompt, batch_size at a time. Give prompt or prompts; seed or seeds."""

    workflow: Literal["batch"] = "batch"
    prompt: Prompt = ""
    prompts: list[Prompt] | None = Field(None, min_length=1, max_length=MAX_IMAGES)
    count: int | None = Field(None, ge=1, le=MAX_IMAGES, description="images per prompt; default 1")
    seeds: list[Seed] | None = Field(None, min_length=1, max_length=MAX_IMAGES)


@dataclass(frozen=True)
class Job:
    index: int
    prompt_index: int
    prompt: str
    seed: int

    def describe(self) -> dict:
        return {"index": self.index, "prompt_index": self.prompt_index, "prompt": self.prompt, "seed": self.seed}


def jobs_of(req: Request, base_seed: int) -> list[Job]:
    if req.prompts is not None and req.prompt:
        raise InvalidRequest("prompts", "Both prompt and prompts are given.", "Give one prompt, or a list in prompts.")
    if req.seeds is not None and req.count is not None:
        raise InvalidRequest("count", f"count={req.count} and seeds (a list of {len(req.seeds)}) are both given.",
                             "Give count (seeds count up from seed) or the list of seeds, not both.")
    prompts = req.prompts if req.prompts is not None else [req.prompt]
    seeds = req.seeds if req.seeds is not None else [(base_seed + k) % 2**32 for k in range(req.count or 1)]
    if len(prompts) * len(seeds) > MAX_IMAGES:
        raise InvalidRequest("count", f"{len(prompts)} prompts x {len(seeds)} seeds = {len(prompts) * len(seeds)} "
                                      f"images, over the limit of {MAX_IMAGES}.", "Split the batch.")
    return [Job(i * len(seeds) + k, i, p, s) for i, p in enumerate(prompts) for k, s in enumerate(seeds)]


def next_chunk(pending: list[Job], size: int) -> list[Job]:
    """The longest run from the front (at most ``size``) with one prompt and consecutive seeds."""
    chunk = pending[:1]
    for job in pending[1:size]:
        prev = chunk[-1]
        if job.prompt_index != prev.prompt_index or job.seed != (prev.seed + 1) % 2**32:
            break
        chunk.append(job)
    return chunk


def validate(req: Request, spec) -> None:
    jobs_of(req, resolve(req, spec).seed)


def _is_oom(e: BaseException) -> bool:
    """CUDA's out-of-memory error (also as a RuntimeError saying so, as some kernels raise it), or ours."""
    import torch

    return isinstance(e, (torch.OutOfMemoryError, OutOfMemory)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _free_memory(device: str) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _chunk_request(req: Request, chunk: list[Job]) -> dict:
    keep = ("model", "weights", "negative_prompt", "width", "height", "steps", "guidance", "scheduler")
    return {"workflow": "txt2img", **{k: getattr(req, k) for k in keep}, "prompt": chunk[0].prompt,
            "seed": chunk[0].seed, "batch_size": len(chunk)}


def run(loaded, request, progress=None, cancel=None,
        on_image: Callable[[object, dict], None] | None = None) -> GenerationResult:
    req = parse(Request, request)
    r = resolve(req, loaded.spec)
    jobs = jobs_of(req, r.seed)
    timer = Timer()
    total = len(jobs)
    result = GenerationResult(images=[], metadata=[])
    pending = list(jobs)
    size = req.batch_size
    fallbacks: list[str] = []
    while pending:
        chunk = next_chunk(pending, size)
        done = total - len(pending)

        def chunk_progress(e, done=done, n=len(chunk)):
            if progress and e.get("stage") == "running":  # steps of all images, so a bar runs once to the end
                progress({**e, "step": done * r.steps + e["step"] * n, "steps": total * r.steps,
                          "images_done": done, "images": total})

        part = None
        try:
            part = txt2img.run(loaded, _chunk_request(req, chunk), progress=chunk_progress, cancel=cancel)
        except Exception as e:
            if not _is_oom(e):
                raise
        if part is None:
            # out of memory; here, past the except block, its frames (and the tensors they held) are gone
            _free_memory(loaded.device)
            first, last = chunk[0].index, chunk[-1].index
            if len(chunk) > 1:
                size = (len(chunk) + 1) // 2  # halve, rounding up: 3 -> 2 -> 1
                fallbacks.append(f"out of memory at batch size {len(chunk)} (images {first}-{last}); "
                                 f"retried at batch size {size}")
                continue
            reason = f"out of memory at batch size 1 on image {first} (seed {chunk[0].seed})"
            result.missing = [{**j.describe(), "reason": reason if j is chunk[0] else
                               f"not attempted: {reason}"} for j in pending]
            break
        for job, image, meta in zip(chunk, part.images, part.metadata):
            meta.update(workflow=NAME, index=job.index, fallbacks=list(fallbacks),
                        batch={"index": job.index, "total": total, "prompt_index": job.prompt_index,
                               "chunk_size": len(chunk), "requested_batch_size": req.batch_size})
            result.images.append(image)
            result.metadata.append(meta)
            if on_image is not None:
                on_image(image, meta)
        result.warnings += [w for w in part.warnings if w not in result.warnings]
        pending = pending[len(chunk):]
    result.warnings += fallbacks
    result.timings = {"generate_s": timer()}
    if result.missing:
        if not result.images:
            raise OutOfMemory(f"batch: none of the {total} images fit in memory "
                              f"({result.missing[0]['reason']}).",
                              "Use a smaller size, a memory plan that offloads, or a larger --vram-budget.",
                              details={"missing": result.missing, "fallbacks": fallbacks})
        result.warnings.append(f"{len(result.missing)} of {total} images are missing (out of memory): "
                               f"indexes {[m['index'] for m in result.missing]}; see result.missing.")
    return result
