"""Train lightdiff's demo model (``lightdiff.demo.model``) on procedural scenes, on one GPU in minutes.

    PYTHONUNBUFFERED=1 python -m lightdiff.demo.train --out DIR --minutes 8.3 --seed 3 --device cuda
    lightdiff train-demo --out DIR --smoke          # CPU, tiny data, a few steps: every code path

Steps (``--minutes`` is the wall-clock budget from start to the end of phase 3; eval comes after):
0. Data: ``--scenes`` training scenes (train split, 50/50 English/Chinese captions) rendered by a
   process pool while training runs; each comes with its canny edges and the caption of its mirror
   image, so a horizontal flip is a free second sample (left/right words swapped, see
   ``mirror_scene``). Images stay as one uint8 tensor on the device. Training never waits for the
   whole set: every phase samples from the scenes rendered so far (``LatentStore`` encodes new
   ones as they arrive).
1. VAE (its share of the budget, ``TrainConfig.split``): L1 + L2 + edge (image-gradient L1)
   reconstruction on whole images, borders included, small KL weight. Then the latents are
   normalised to unit variance per channel by folding the statistics into the VAE's 1x1 quant
   convs (exact). With ``--init`` the encoder (so the latent space the UNet learned) is kept and a
   non-zero first share fine-tunes only the decoder; a zero share keeps the VAE as it is.
2. UNet + text encoder jointly: epsilon prediction on SD1.5's noise schedule, min-SNR-5 weighting,
   10 % empty captions (classifier-free guidance), bf16 autocast, AdamW, EMA of both.
   Saves the complete diffusers folder (fp16 safetensors) in DIR. With ``--init`` a zero second share
   keeps them as they are (``--split 0,0,1`` trains the ControlNet alone).
3. Canny ControlNet from the UNet (frozen UNet and text encoder); saved in DIR/controlnet.
4. Eval: held-out captions (colour x shape pairs never trained on) generated with the saved folder,
   scored by ``lightdiff.demo.checker``; the VAE's round trip of the true renders scored the same
   way (the ceiling the UNet can reach); DIR/eval.json, sample grids, DIR/summary.json.

``--compile`` compiles the VAE and UNet loss functions (``torch.compile``, static shapes). Off by default:
on the H100 (2026-11-26) the first compiled steps took 81.5 s (VAE) and 117 s (UNet) of an 8-minute run and
the learning-rate schedule, which follows the clock, had decayed by then; compiled steps ran 1.35x faster
than eager UNet steps, which does not pay back within a 10-minute run. If compiling fails, the phase goes on
in eager mode and says so. ``--compile-mode reduce-overhead`` adds torch.compile's CUDA graphs over the compiled
forward and backward (never measured in a training run).

On CUDA each phase's whole step (forward, backward, clipping, AdamW) is captured once as a CUDA graph and replayed
(``lightdiff.demo.graphstep``; ``--no-cuda-graph`` turns it off): a few seconds to capture instead of minutes to
compile. Median logged rates on the H100 in 10-minute runs (2026-11-27; the eager runs are from earlier sessions
on the same card type, docs/demo/attempts): UNet at batch 256 17.4 steps/s against 10.5 eager, the VAE 30 against
25-28, the ControlNet 18 against 12.5. At batch 512 the step is bound by the GPU (about 7 steps/s either way); at
128 it reaches 25.
Every phase ends with a checkpoint on disk, so a run killed later still leaves a usable part.
Losses go to DIR/losses.jsonl and DIR/losses.png. Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lightdiff.demo import grounding, model
from lightdiff.demo.graphstep import EagerStep, GraphedStep, make_adamw, set_lr

BARS = {"colour_shape": 80.0, "position": 60.0}  # percent on held-out captions, for the shipped model


@dataclass
class TrainConfig:
    out: str
    minutes: float = 8.0
    seed: int = 0
    device: str = "cuda"
    smoke: bool = False
    scenes: int = 100_000
    size: int = 128
    workers: int = 0  # 0: one per CPU core but two (the training process needs one), at most 15
    chunk: int = 500  # scenes per render task
    # share of relations captioned in the places form ("on the left A, on the right B"). 0, the shipped
    # weights' data: two fresh runs at 0.5 (2026-11-27) placed objects no better in either form (docs/demo)
    places_mix: float = 0.0
    # how two related objects are laid out in the training scenes (scenes.PAIR_LAYOUTS). "halves" (the shipped
    # weights' data since 2026-11-27, sixth session) puts them across the centre line, as lone places are drawn:
    # relations moved to the right axis (position 48.8% -> 57.7%, sixth session, docs/demo). "free", before:
    # relations at chance. Eval sets keep "free" (comparable sets).
    pair_layout: str = "halves"
    split: tuple[float, float, float] = (0.30, 0.62, 0.08)  # VAE / UNet+text / ControlNet share of --minutes
    vae_batch: int = 32  # whole images
    vae_crop: int | None = None  # None: whole images, so the VAE learns the image border too
    vae_lr: float = 8e-4
    vae_warmup: int = 100
    vae_edge_weight: float = 1.0  # L1 on horizontal and vertical pixel differences: crisp shape edges
    kl_weight: float = 1e-6  # per pixel, as SD's VAE (KL summed, reconstruction summed)
    unet_batch: int = 512
    unet_lr: float = 5e-4
    unet_warmup: int = 300
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    cn_batch: int = 256
    cn_lr: float = 3e-4
    cn_warmup: int = 50
    cn_caption_dropout: float = 0.3
    max_steps: int | None = None  # per phase (smoke); None: time alone ends a phase
    render_wait_s: float = 60.0  # after phase 1, wait at most this long for a first chunk of scenes
    refresh_every: int = 20  # steps between looks for newly rendered scenes to encode
    init: str | None = None  # continue from a trained folder: its encoder is kept, the rest trains on
    encode_batch: int = 1024
    eval_n: int = 200
    eval_steps: int = 20
    eval_guidance: tuple[float, ...] = (3.0, 5.0, 7.5)
    eval_batch: int = 50
    eval_controlnet_n: int = 50
    log_every: int = 50
    fp16: bool = True
    cpu_threads: int | None = None  # torch intra-op threads for this run (None: leave as is)
    bf16: bool | None = None  # bf16 autocast; None: on CUDA only
    compile: bool = False  # torch.compile the VAE and UNet loss functions (see the module docstring)
    compile_backend: str = "inductor"  # "aot_eager" traces without generating code (CPU checks)
    # torch.compile's mode for the compiled loss functions: None (default) or "reduce-overhead" (CUDA graphs
    # over forward and backward: the eager step is launch-bound, 10 steps/s at batch 256 on an H100). Not yet
    # measured in a training run (docs/next-gpu-runs.md).
    compile_mode: str | None = None
    # each phase's whole training step (forward, backward, clipping, AdamW) captured as one CUDA graph and
    # replayed (lightdiff.demo.graphstep). None: on with CUDA (H100, 2026-11-27: UNet 17.4 steps/s at batch
    # 256 against 10.5 eager; docs/demo), off on the CPU and under --compile-mode reduce-overhead
    cuda_graph: bool | None = None
    # captions written twice for the text encoder, so every token of the second copy has read the whole caption
    # (lightdiff.demo.vocab; the shipped weights' recipe); a continued run (--init) keeps its folder's tokenizer
    echo: bool = True
    # weight of the grounding loss (lightdiff.demo.grounding: each object's words attend to its own mask in the
    # UNet's cross-attention, TokenCompose-style); 0: off, and the step is unchanged. The shipped weights (H100,
    # 2026-11-27, seventh session) used 1e-3 with grounding_min_t 600 in both runs: held-out position 57.7% ->
    # 60.3% on the same six sets (fewer relations on the wrong axis; the direction still near chance; docs/demo)
    grounding_weight: float = 0.0
    # only samples noised at this timestep or later (of 1000) get the grounding loss: the layout is decided at
    # high noise, and below it the noisy latent still shows the layout the attention could simply follow
    grounding_min_t: int = 0

    @classmethod
    def smoke_preset(cls, out: str, **kw) -> "TrainConfig":
        """CPU, 64x64, tiny data and a few steps per phase: exercises every code path in seconds."""
        base = dict(out=out, minutes=2.0, device="cpu", smoke=True, scenes=48, size=64, workers=2, chunk=16,
                    vae_batch=8, unet_batch=8, cn_batch=4, vae_warmup=2, unet_warmup=2, cn_warmup=2,
                    max_steps=3, refresh_every=1,
                    render_wait_s=60.0, encode_batch=16, eval_n=4, eval_steps=2, eval_guidance=(5.0,),
                    eval_batch=4, eval_controlnet_n=2, log_every=1,
                    # one thread: tiny ops gain nothing from two, and a busy machine stalls two at every barrier
                    cpu_threads=1, bf16=True)
        base.update(kw)
        return cls(**base)

    def compiling(self, device) -> bool:
        return bool(self.compile)

    def graphing(self, device) -> bool:
        wanted = self.cuda_graph if self.cuda_graph is not None else self.compile_mode != "reduce-overhead"
        return wanted and device.type == "cuda"


# ---------------------------------------------------------------- data

def mirror_scene(scene):
    """The scene flipped left-right: x mirrored, tilts negated, left/right words and horizontal
    gradients swapped. Shapes are left-right symmetric, so the flipped render is this scene's render
    (up to the direction of diagonal stripes)."""
    from lightdiff.demo.scenes import Background

    swap = {"left": "right", "right": "left", "left of": "right of", "right of": "left of"}
    objects = tuple(replace(o, cx=1.0 - o.cx, angle=-o.angle) for o in scene.objects)
    bg = scene.background
    if bg.kind == "horizontal":
        bg = Background(bg.kind, tuple(reversed(bg.colours)))
    return replace(scene, objects=objects, background=bg,
                   relation=swap.get(scene.relation, scene.relation), position=swap.get(scene.position, scene.position))


def render_chunk(task: tuple) -> tuple:
    """Worker: scenes [start, stop) of a split -> images, canny edges, captions, mirrored captions, and with a
    ``mask_size`` (0: none) each object's mask at that size and its words."""
    import numpy as np

    from lightdiff.demo.model import canny_edges
    from lightdiff.demo.scenes import SceneDataset, caption, caption_form, caption_language, render

    seed, split, start, stop, size, places_mix, pair_layout, mask_size = task
    ds = SceneDataset(seed=seed, length=stop, size=size, split=split, places_mix=places_mix, pair_layout=pair_layout)
    n = stop - start
    images = np.empty((n, size, size, 3), np.uint8)
    edges = np.empty((n, size, size), np.uint8)
    captions, mirrored, phrases = [], [], []
    masks = np.zeros((n, grounding.MAX_OBJECTS, mask_size, mask_size), np.uint8) if mask_size else None
    for k, i in enumerate(range(start, stop)):
        scene, text = ds.scene_and_caption(i)
        images[k] = np.asarray(render(scene, size))
        edges[k] = canny_edges(images[k])
        captions.append(text)
        mirrored.append(caption(mirror_scene(scene), caption_language(text), caption_form(text)))
        if mask_size:  # the mirror's masks are these flipped; its phrases are these
            masks[k] = grounding.object_masks(scene, mask_size)
            phrases.append(grounding.object_phrases(scene, caption_language(text)))
    if mask_size:
        return start, images, edges, captions, mirrored, masks, phrases
    return start, images, edges, captions, mirrored


def _lower_priority() -> None:
    """Render workers yield the CPU to the training process and to torch.compile's compile workers."""
    try:
        os.nice(10)
    except OSError:
        pass


class SceneRenderer:
    """Renders the training scenes in a process pool while training runs; ``ready`` scenes (a
    contiguous prefix) can be used at any time."""

    def __init__(self, cfg: TrainConfig):
        import numpy as np

        n, s = cfg.scenes, cfg.size
        self.n = n
        self.images = np.empty((n, s, s, 3), np.uint8)
        self.edges = np.empty((n, s, s), np.uint8)
        self.captions: list[str | None] = [None] * n
        self.mirrored: list[str | None] = [None] * n
        # with the grounding loss: each object's mask at the UNet's cross-attention resolution, and its words
        self.mask_size = s // model.LATENT_FACTOR // 2 if cfg.grounding_weight > 0 else 0
        self.masks = (np.zeros((n, grounding.MAX_OBJECTS, self.mask_size, self.mask_size), np.uint8)
                      if self.mask_size else None)
        self.phrases: list[list[str] | None] = [None] * n
        self.ready = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        tasks = [(cfg.seed, "train", a, min(a + cfg.chunk, n), s, cfg.places_mix, cfg.pair_layout, self.mask_size)
                 for a in range(0, n, cfg.chunk)]
        workers = cfg.workers or max(1, min(15, (os.cpu_count() or 3) - 2))
        self.pool = None
        if workers > 1:
            import multiprocessing as mp

            # spawn, not fork: the parent initialises CUDA, which a forked child must never inherit
            self.pool = mp.get_context("spawn").Pool(workers, initializer=_lower_priority)
            results = self.pool.imap(render_chunk, tasks)
        else:
            results = map(render_chunk, tasks)
        self.t0 = time.perf_counter()
        self.seconds = None
        self._thread = threading.Thread(target=self._collect, args=(results, self.pool is not None), daemon=True)
        self._thread.start()

    def _collect(self, results, pooled: bool) -> None:
        import multiprocessing as mp

        try:
            while not self._stop.is_set():
                try:  # a timeout, so that stop() is noticed while a chunk is still rendering
                    item = results.next(timeout=0.5) if pooled else next(results)
                except mp.TimeoutError:
                    continue
                except StopIteration:
                    break
                start, images, edges, captions, mirrored = item[:5]
                stop = start + len(captions)
                if self.mask_size:
                    self.masks[start:stop], self.phrases[start:stop] = item[5], item[6]
                self.images[start:stop], self.edges[start:stop] = images, edges
                self.captions[start:stop], self.mirrored[start:stop] = captions, mirrored
                self.ready = stop
        except BaseException as e:  # surfaced to the training loop by check()
            self.error = e
        finally:
            self.seconds = time.perf_counter() - self.t0

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"scene rendering failed: {self.error!r}") from self.error

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait_for(self, count: int, timeout_s: float) -> int:
        """Wait until ``count`` scenes are ready (or rendering ends, or ``timeout_s`` passes)."""
        deadline = time.perf_counter() + timeout_s
        while self.ready < min(count, self.n) and not self.done and time.perf_counter() < deadline:
            self.check()
            time.sleep(0.05)
        self.check()
        return self.ready

    def finish(self, wait_s: float) -> int:
        """Wait up to ``wait_s`` for the rest, then stop the pool; returns how many scenes are ready."""
        self._thread.join(timeout=max(0.0, wait_s))
        self.stop()
        self.check()
        return self.ready

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


class DeviceImages:
    """The rendered images on the training device, copied over as they become ready."""

    def __init__(self, renderer: SceneRenderer, device):
        import torch

        self.renderer, self.copied = renderer, 0
        r = renderer
        self.images = torch.empty(r.images.shape, dtype=torch.uint8, device=device)
        self.edges = torch.empty(r.edges.shape, dtype=torch.uint8, device=device)

    def sync(self) -> int:
        import torch

        ready = self.renderer.ready
        if ready > self.copied:
            a, b = self.copied, ready
            self.images[a:b].copy_(torch.from_numpy(self.renderer.images[a:b]))
            self.edges[a:b].copy_(torch.from_numpy(self.renderer.edges[a:b]))
            self.copied = ready
        return self.copied


class LatentStore:
    """VAE latents (posterior means) and caption tokens of every rendered scene and of its mirror,
    encoded as the scenes arrive, so training starts on the first chunks and never waits for the rest.

    Layout (fixed, so indices stay valid as the store grows): scene i at row i, its mirror at row
    ``capacity + i``; rows of scenes not rendered yet are never sampled.
    """

    def __init__(self, cfg: TrainConfig, vae, data: DeviceImages, tokenizer, device):
        import torch

        self.cfg, self.vae, self.data, self.tokenizer, self.device = cfg, vae, data, tokenizer, device
        self.capacity = data.renderer.n
        self.count = 0
        self.latents = None  # allocated at the first encode, when the latent shape is known
        self.tokens = torch.empty((2 * self.capacity, tokenizer.model_max_length), dtype=torch.long, device=device)
        # with the grounding loss: each row's object masks (coverage 0-255) and which token names which object
        side = getattr(data.renderer, "mask_size", 0)
        self.masks = self.token_obj = None
        if side:
            self.masks = torch.zeros((2 * self.capacity, grounding.MAX_OBJECTS, side, side), dtype=torch.uint8,
                                     device=device)
            self.token_obj = torch.full((2 * self.capacity, tokenizer.model_max_length), -1, dtype=torch.int8,
                                        device=device)
        self.seconds = 0.0

    def update(self) -> int:
        """Encode the scenes rendered since the last call; returns how many scenes the store holds."""
        import numpy as np
        import torch

        ready = self.data.sync()
        if ready <= self.count:
            return self.count
        t0 = time.perf_counter()
        a, n, cap = self.count, ready, self.capacity
        autocast = bf16_autocast(self.cfg, self.device)
        with torch.no_grad(), autocast:
            for flip in (False, True):
                for i in range(a, n, self.cfg.encode_batch):
                    x = self.data.images[i:min(n, i + self.cfg.encode_batch)]
                    z = self.vae.encode(to_model_input(x.flip(2) if flip else x)).latent_dist.mean
                    if self.latents is None:
                        self.latents = torch.zeros((2 * cap, *z.shape[1:]), dtype=torch.float16, device=self.device)
                    self.latents[i + cap * flip:i + cap * flip + len(z)] = z.to(torch.float16)
        renderer = self.data.renderer
        host = torch.device("cpu")
        for first, texts in ((a, renderer.captions[a:n]), (cap + a, renderer.mirrored[a:n])):
            ids = tokenize(self.tokenizer, texts, host)
            self.tokens[first:first + len(texts)] = ids.to(self.device)
            if self.token_obj is not None:  # which tokens name which object, read from the host copy
                maps = [grounding.object_token_map(self.tokenizer, row, phrases)
                        for row, phrases in zip(ids.numpy(), renderer.phrases[a:n])]
                self.token_obj[first:first + len(texts)] = torch.from_numpy(np.stack(maps)).to(self.device)
        if self.masks is not None:
            masks = torch.from_numpy(renderer.masks[a:n]).to(self.device)
            self.masks[a:n], self.masks[cap + a:cap + n] = masks, masks.flip(-1)  # the mirror: flipped left-right
        self.count = n
        self.seconds += time.perf_counter() - t0
        return n

    def sample(self, batch: int):
        """Random rows among the encoded scenes and their mirrors (no host sync)."""
        import torch

        k = torch.randint(0, 2 * self.count, (batch,), device=self.device)
        return torch.where(k < self.count, k, k - self.count + self.capacity)


# ---------------------------------------------------------------- helpers

class Log:
    """Loss curves: one JSON line per logged step in DIR/losses.jsonl, and the same printed."""

    def __init__(self, out: Path, t0: float):
        self.path, self.t0, self.rows = out / "losses.jsonl", t0, []
        self.path.write_text("")

    def __call__(self, phase: str, step: int, **values) -> None:
        row = {"phase": phase, "step": step, "t": round(time.perf_counter() - self.t0, 2),
               **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    def final(self, phase: str, key: str = "loss", last: int = 5) -> float | None:
        values = [r[key] for r in self.rows if r["phase"] == phase and key in r][-last:]
        return sum(values) / len(values) if values else None

    def plot(self, out: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        phases = [p for p in ("vae", "unet", "grounding", "controlnet") if any(r["phase"] == p for r in self.rows)]
        if not phases:
            return
        fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.6), squeeze=False)
        for ax, phase in zip(axes[0], phases):
            rows = [r for r in self.rows if r["phase"] == phase]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
            ax.set_title(f"{phase} loss")
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "losses.png", dpi=110)
        plt.close(fig)


class LossMeter:
    """A phase's losses summed on the device (no host sync per step), their mean logged every ``every``
    steps with steps per second; values given as tensors are read only when a line is logged."""

    def __init__(self, log: "Log", phase: str, every: int):
        self.log, self.phase, self.every = log, phase, every
        self.total, self.n, self.t0 = None, 0, time.perf_counter()

    def add(self, step: int, loss, **values) -> None:
        self.total = loss.detach() if self.total is None else self.total + loss.detach()
        self.n += 1
        if step % self.every == 0:
            now = time.perf_counter()
            self._write(step, values, steps_per_s=round(self.n / max(1e-6, now - self.t0), 2))
            self.total, self.n, self.t0 = None, 0, now

    def flush(self, step: int, **values) -> None:
        """The mean of the steps since the last line (the phase's end)."""
        if self.n:
            self._write(step, values)

    def _write(self, step: int, values: dict, **extra) -> None:
        read = {k: float(v) if hasattr(v, "detach") else v for k, v in values.items()}
        self.log(self.phase, step, loss=float(self.total) / self.n, **read, **extra)


def lr_at(base: float, step: int, frac: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % over the phase's time box (``frac`` of it spent)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return base * warm * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, frac))))


class Phase:
    """A time-boxed loop: ends at an absolute deadline or after ``max_steps``."""

    def __init__(self, name: str, deadline: float, max_steps: int | None):
        self.name, self.deadline, self.max_steps = name, deadline, max_steps
        self.t0 = time.perf_counter()
        self.step = 0
        self.info: dict = {}

    @property
    def frac(self) -> float:
        span = max(1e-6, self.deadline - self.t0)
        return (time.perf_counter() - self.t0) / span

    def running(self) -> bool:
        if self.max_steps is not None and self.step >= self.max_steps:
            return False
        return time.perf_counter() < self.deadline or self.step == 0  # every phase takes one step

    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def to_model_input(images_u8, crop: int | None = None, offset: tuple[int, int] = (0, 0)):
    """uint8 NHWC -> float NCHW in [-1, 1], channels_last."""
    import torch

    x = images_u8
    if crop is not None:
        oy, ox = offset
        x = x[:, oy:oy + crop, ox:ox + crop]
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def bf16_autocast(cfg: TrainConfig, device):
    """bf16 autocast on CUDA (and on the CPU when asked: the smoke run checks that code path)."""
    import torch

    enabled = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def half_copy(module, fp16: bool):
    import copy

    import torch

    twin = copy.deepcopy(module).to("cpu")
    return twin.to(torch.float16) if fp16 else twin


def folder_bytes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.safetensors"))}


class EMA:
    """Exponential moving average of parameters, one foreach lerp per step (no host sync). The decay
    ramps up as (1 + n) / (10 + n) to ``decay``, as diffusers' EMAModel does."""

    def __init__(self, params, decay: float):
        self.params, self.decay, self.n = list(params), decay, 0
        self.shadow = [p.detach().clone() for p in self.params]

    def step(self) -> None:
        import torch

        self.n += 1
        decay = min(self.decay, (1 + self.n) / (10 + self.n))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    def copy_to(self) -> None:
        import torch

        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.shadow)


class Stepper:
    """Runs one training step through the compiled loss function, or the eager one.

    The first step compiles (forward at the call, backward at ``loss.backward()``); if that raises,
    the phase goes on in eager mode and the failure is printed and recorded, instead of losing the run.
    """

    def __init__(self, name: str, loss_fn, cfg: TrainConfig, device):
        import torch

        self.name, self.eager = name, loss_fn
        self.compiled = cfg.compiling(device)
        self.fn = (torch.compile(loss_fn, backend=cfg.compile_backend, dynamic=False, mode=cfg.compile_mode)
                   if self.compiled else loss_fn)
        # CUDA graphs reuse their output memory at the next replay: each step is marked as a new one, and what
        # outlives the step (the logged loss and extras) is copied out
        self.graphed = self.compiled and cfg.compile_mode == "reduce-overhead"
        self.first_step_s: float | None = None
        self.error: str | None = None

    def __call__(self, params, *args):
        """loss_fn(*args) -> (loss, extras); backward; returns the same."""
        if self.first_step_s is not None:
            return self._step(*args)
        t0 = time.perf_counter()
        try:
            out = self._step(*args)
        except Exception as e:  # noqa: BLE001 - compile failures: go on in eager mode, say so
            if self.fn is self.eager:
                raise
            traceback.print_exc()
            print(f"{self.name}: torch.compile failed ({e!r}); training on in eager mode", flush=True)
            self.error, self.fn, self.compiled, self.graphed = repr(e), self.eager, False, False
            for p in params:
                p.grad = None
            out = self._step(*args)
        self.first_step_s = time.perf_counter() - t0
        print(f"{self.name}: first step (compile={self.compiled}) took {self.first_step_s:.1f}s", flush=True)
        return out

    def _step(self, *args):
        import torch

        if self.graphed:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.fn(*args)
        out[0].backward()
        if self.graphed:
            out = tuple(o.detach().clone() for o in out)
        return out

    def info(self) -> dict:
        out = {"compiled": self.compiled, "first_step_seconds": round(self.first_step_s or 0.0, 1)}
        if self.graphed:
            out["mode"] = "reduce-overhead"
        if self.error:
            out["compile_error"] = self.error
        return out


def training_step(name: str, loss_fn, params, lr: float, weight_decay: float, cfg: TrainConfig, device,
                  compile_allowed: bool = True):
    """A phase's AdamW and its step function, step(*batch) -> loss_fn's outputs: one CUDA graph per step
    with ``cfg.cuda_graph`` on CUDA, else eager (or torch.compile'd with ``cfg.compile``)."""
    graphed = cfg.graphing(device)
    opt = make_adamw(params, lr, (0.9, 0.99), weight_decay, graphed, device)
    stepper = Stepper(name, loss_fn, replace(cfg, compile=cfg.compile and compile_allowed), device)
    if graphed:
        return opt, GraphedStep(name, stepper.fn, params, opt, eager_fn=loss_fn)
    return opt, EagerStep(stepper, params, opt)


def noise_tables(noise_scheduler, device, snr_gamma: float = 5.0) -> dict:
    """Per-timestep tensors on the device: sqrt(alpha_bar), sqrt(1 - alpha_bar) and the min-SNR weight
    for epsilon prediction (so a step needs no scheduler call and no host sync)."""
    import torch

    ab = noise_scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    snr = ab / (1.0 - ab)
    return {"a": ab.sqrt(), "b": (1.0 - ab).sqrt(), "weight": torch.clamp(snr, max=snr_gamma) / snr}


def add_noise(tables: dict, z0, noise, t):
    import torch

    a, b = tables["a"][t].view(-1, 1, 1, 1), tables["b"][t].view(-1, 1, 1, 1)
    return (a * z0 + b * noise).contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- phase 1: VAE

def vae_loss_fn(vae, cfg: TrainConfig, device, decoder_only: bool = False):
    """loss(x) -> (loss, l1): L1 + L2 + edge L1 reconstruction plus a small KL, for x in [-1, 1] NCHW.

    Written against the VAE's parts (encoder, quant convs, decoder) so it compiles as one graph.
    With ``decoder_only`` the encoder runs without gradients: the latent space stays as it is.
    """
    import torch

    enabled = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"

    def loss_fn(x):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            with torch.set_grad_enabled(not decoder_only):
                moments = vae.quant_conv(vae.encoder(x))
            mean, logvar = moments.float().chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            rec = vae.decoder(vae.post_quant_conv(z)).float()
        diff = rec - x
        l1 = diff.abs().mean()
        l2 = diff.pow(2).mean()
        edge = ((diff[:, :, :, 1:] - diff[:, :, :, :-1]).abs().mean()
                + (diff[:, :, 1:, :] - diff[:, :, :-1, :]).abs().mean())
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
        loss = l1 + l2 + cfg.vae_edge_weight * edge + (0.0 if decoder_only else cfg.kl_weight) * kl
        return loss, l1.detach()

    return loss_fn


def train_vae(cfg: TrainConfig, vae, data: DeviceImages, renderer: SceneRenderer, deadline: float, log: Log, device,
              decoder_only: bool = False):
    """Phase 1. Whole images (``vae_crop`` None) by default; random left-right flips."""
    import random

    import torch

    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt, step = training_step("vae", vae_loss_fn(vae, cfg, device, decoder_only), params, cfg.vae_lr, 0.0, cfg, device)
    phase, meter = Phase("vae", deadline, cfg.max_steps), LossMeter(log, "vae", cfg.log_every)
    crop = min(cfg.vae_crop or cfg.size, cfg.size)
    rng = random.Random(cfg.seed)
    vae.train()
    lr, l1 = cfg.vae_lr, None
    while phase.running():
        renderer.check()
        available = data.sync()
        if available == 0:
            time.sleep(0.05)
            continue
        lr = lr_at(cfg.vae_lr, phase.step, phase.frac, cfg.vae_warmup)
        set_lr(opt, lr)
        idx = torch.randint(0, available, (cfg.vae_batch,), device=device)
        batch = data.images[idx]
        if rng.random() < 0.5:  # a Python coin: no host sync
            batch = batch.flip(2)
        oy, ox = rng.randint(0, cfg.size - crop), rng.randint(0, cfg.size - crop)
        x = to_model_input(batch, crop if crop < cfg.size else None, (oy, ox))
        loss, l1 = step(x)
        phase.step += 1
        meter.add(phase.step, loss, l1=l1, lr=lr, scenes_ready=available)
    meter.flush(phase.step, l1=l1, lr=lr, scenes_ready=data.copied)
    vae.requires_grad_(True)
    vae.eval()
    phase.info = step.info()
    return phase


def normalise_latents(vae, images, device, batch: int = 256) -> dict:
    """Rescale the VAE so latents have zero mean and unit variance per channel (scaling_factor 1).

    quant_conv (encoder side) and post_quant_conv (decoder side) are 1x1 convs, so the statistics fold
    into them exactly: mean' = (mean - m) / s, logvar' = logvar - 2 log s; the decoder undoes it.
    """
    import torch

    with torch.no_grad():
        lat = torch.cat([vae.encode(to_model_input(images[i:i + batch])).latent_dist.mean.float()
                         for i in range(0, len(images), batch)])
        m = lat.mean(dim=(0, 2, 3))
        s = lat.std(dim=(0, 2, 3)).clamp_min(1e-4)
        c = vae.config.latent_channels
        qw, qb = vae.quant_conv.weight, vae.quant_conv.bias
        qw[:c] /= s.view(-1, 1, 1, 1)
        qb[:c] = (qb[:c] - m) / s
        qb[c:] -= 2 * torch.log(s)
        pw, pb = vae.post_quant_conv.weight, vae.post_quant_conv.bias
        pb += (pw[:, :, 0, 0] * m.view(1, -1)).sum(dim=1)
        pw *= s.view(1, -1, 1, 1)
    return {"channel_mean": [round(float(v), 5) for v in m], "channel_std": [round(float(v), 5) for v in s]}


# ---------------------------------------------------------------- phase 2: UNet + text encoder

def tokenize(tokenizer, texts: list[str], device):
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)


def unet_loss_fn(unet, text_encoder, tables: dict, cfg: TrainConfig, device, kept: list | None = None):
    """loss(z0, ids, t, noise) -> (loss,): min-SNR-5 weighted epsilon MSE; one graph for torch.compile. With
    ``kept`` (the list ``grounding.keep_cross_attention`` fills): loss(z0, ids, t, noise, token_obj, masks) ->
    (loss + grounding_weight * grounding, loss, grounding)."""
    import torch

    enabled = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"

    def loss_fn(z0, ids, t, noise, token_obj=None, masks=None):
        if kept is not None:
            kept.clear()  # this step's layers only (a graph replay reruns none of this Python)
        zt = add_noise(tables, z0, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            context = text_encoder(ids, return_dict=False)[0]
            pred = unet(zt, t, context, return_dict=False)[0]
        err = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (err * tables["weight"][t]).mean()
        if kept is None:
            return (loss,)
        ground = grounding.grounding_loss(kept, token_obj, masks.float() / 255)
        return loss + cfg.grounding_weight * ground, loss, ground

    return loss_fn


def train_unet(cfg: TrainConfig, unet, text_encoder, store: LatentStore, empty_ids, noise_scheduler,
               deadline: float, log: Log, device):
    import torch

    params = list(unet.parameters()) + list(text_encoder.parameters())
    tables = noise_tables(noise_scheduler, device)
    grounded = store.masks is not None
    kept, processors = grounding.keep_cross_attention(unet) if grounded else (None, None)
    opt, step = training_step("unet", unet_loss_fn(unet, text_encoder, tables, cfg, device, kept), params,
                              cfg.unet_lr, 0.01, cfg, device)
    ema = EMA(params, cfg.ema_decay)
    num_t = noise_scheduler.config.num_train_timesteps
    phase, meter = Phase("unet", deadline, cfg.max_steps), LossMeter(log, "unet", cfg.log_every)
    ground_meter = LossMeter(log, "grounding", cfg.log_every) if grounded else None
    unet.train()
    text_encoder.train()
    lr = cfg.unet_lr
    while phase.running():
        if phase.step % cfg.refresh_every == 0:
            store.data.renderer.check()
            store.update()
        lr = lr_at(cfg.unet_lr, phase.step, phase.frac, cfg.unet_warmup)
        set_lr(opt, lr)
        idx = store.sample(cfg.unet_batch)
        z0 = store.latents[idx].float()
        ids = store.tokens[idx]
        drop = torch.rand(len(ids), device=device) < cfg.caption_dropout
        ids = torch.where(drop[:, None], empty_ids[None], ids)
        t = torch.randint(0, num_t, (len(ids),), device=device)
        noise = torch.randn_like(z0)
        if grounded:  # a dropped caption names no object; a sample below grounding_min_t is not grounded
            skip = drop | (t < cfg.grounding_min_t)
            token_obj = torch.where(skip[:, None], torch.full_like(store.token_obj[idx], -1), store.token_obj[idx])
            _, loss, ground = step(z0, ids, t, noise, token_obj, store.masks[idx])  # "unet" logs the diffusion loss
            ground_meter.add(phase.step + 1, ground)
        else:
            (loss,) = step(z0, ids, t, noise)
        ema.step()
        phase.step += 1
        meter.add(phase.step, loss, lr=lr, scenes=store.count)
    meter.flush(phase.step, lr=lr, scenes=store.count)
    if grounded:
        ground_meter.flush(phase.step)
        unet.set_attn_processor(processors)  # diffusers' own again: the ControlNet phase and the eval keep nothing
    ema.copy_to()  # ship the averaged weights
    unet.eval()
    text_encoder.eval()
    phase.info = step.info()
    return phase


# ---------------------------------------------------------------- phase 3: ControlNet

def train_controlnet(cfg: TrainConfig, controlnet, unet, text_encoder, store: LatentStore, empty_ids, edges,
                     noise_scheduler, deadline: float, log: Log, device):
    """Never compiled: the phase is short, and compiling it would cost most of it (a CUDA graph costs seconds)."""
    import torch

    for m in (unet, text_encoder):
        m.requires_grad_(False)
    tables = noise_tables(noise_scheduler, device)
    opt, step = training_step("controlnet", controlnet_loss_fn(controlnet, unet, text_encoder, tables, cfg, device),
                              list(controlnet.parameters()), cfg.cn_lr, 0.0, cfg, device, compile_allowed=False)
    cap = store.capacity
    phase, meter = Phase("controlnet", deadline, cfg.max_steps), LossMeter(log, "controlnet", cfg.log_every)
    controlnet.train()
    lr = cfg.cn_lr
    while phase.running():
        if phase.step % cfg.refresh_every == 0:
            store.update()
        lr = lr_at(cfg.cn_lr, phase.step, phase.frac, cfg.cn_warmup)
        set_lr(opt, lr)
        idx = store.sample(cfg.cn_batch)
        mirrored = idx >= cap
        edge = edges[idx % cap].float().div_(255.0)
        edge = torch.where(mirrored[:, None, None], edge.flip(2), edge)
        cond = edge[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        z0 = store.latents[idx].float()
        ids = torch.where((torch.rand(len(idx), device=device) < cfg.cn_caption_dropout)[:, None],
                          empty_ids[None], store.tokens[idx])
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), device=device)
        noise = torch.randn_like(z0)
        (loss,) = step(z0, ids, t, noise, cond)
        phase.step += 1
        meter.add(phase.step, loss, lr=lr)
    meter.flush(phase.step, lr=lr)
    controlnet.eval()
    phase.info = step.info()
    return phase


def controlnet_loss_fn(controlnet, unet, text_encoder, tables: dict, cfg: TrainConfig, device):
    """loss(z0, ids, t, noise, cond) -> (loss,): epsilon MSE through the frozen UNet with the ControlNet's
    residuals; the text encoder runs without gradients."""
    import torch

    def loss_fn(z0, ids, t, noise, cond):
        zt = add_noise(tables, z0, noise, t)
        with bf16_autocast(cfg, device):
            with torch.no_grad():
                context = text_encoder(ids)[0]
            down, mid = controlnet(zt, t, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False)
            pred = unet(zt, t, context, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample.float()
        return ((pred - noise).pow(2).mean(),)

    return loss_fn


# ---------------------------------------------------------------- eval

def grid(images, columns: int = 8):
    from PIL import Image

    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * w, rows * h), (128, 128, 128))
    for i, img in enumerate(images):
        sheet.paste(img, ((i % columns) * w, (i // columns) * h))
    return sheet


def _percent(results, name: str) -> float:
    return round(100.0 * sum(getattr(r, f"{name}_ok") for r in results) / max(1, len(results)), 2)


def _generate(pipe, prompts, cfg: TrainConfig, guidance: float, seed: int, **extra):
    import torch

    images = []
    for a in range(0, len(prompts), cfg.eval_batch):
        chunk = prompts[a:a + cfg.eval_batch]
        gens = [torch.Generator("cpu").manual_seed(seed + a + i) for i in range(len(chunk))]
        kw = {k: v[a:a + cfg.eval_batch] if isinstance(v, list) else v for k, v in extra.items()}
        out = pipe(prompt=chunk, num_inference_steps=cfg.eval_steps, guidance_scale=guidance,
                   height=cfg.size, width=cfg.size, generator=gens, **kw)
        images.extend(out.images)
    return images


def vae_round_trip(vae, images, device, batch: int = 100) -> list:
    """Encode (posterior mean) and decode PIL images with the pipeline's VAE: what the VAE alone keeps."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for a in range(0, len(images), batch):
        x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images[a:a + batch]]))
        x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device=device, dtype=vae.dtype)
        with torch.no_grad():
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        arr = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out.extend(Image.fromarray(a_) for a_ in arr)
    return out


def evaluate(cfg: TrainConfig, out: Path, device) -> dict:
    """Generate from held-out captions with the saved folder and score prompt adherence."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from PIL import Image

    from lightdiff.demo.checker import CRITERIA, score_many
    from lightdiff.demo.model import canny_edges
    from lightdiff.demo.scenes import SceneDataset, caption_language

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(str(out), torch_dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    heldout = SceneDataset(seed=cfg.seed, length=cfg.eval_n, size=cfg.size, split="heldout", lang_mix=0.5,
                           places_mix=cfg.places_mix)
    samples = [heldout[i] for i in range(cfg.eval_n)]
    captions = [s.caption for s in samples]
    reference = score_many([s.image for s in samples], captions)["percent"]
    round_trip = vae_round_trip(pipe.vae, [s.image for s in samples], device)
    rt_scores = {k: round(v, 2) for k, v in score_many(round_trip, captions)["percent"].items()}
    grid(round_trip[:16]).save(out / "samples_vae_round_trip.png")
    print("eval VAE round trip of the true renders: " + " ".join(f"{k}={v:.1f}" for k, v in rt_scores.items()),
          flush=True)
    report: dict = {"n": cfg.eval_n, "steps": cfg.eval_steps, "scheduler": type(pipe.scheduler).__name__,
                    "size": cfg.size, "bars": BARS, "reference_renders": reference, "vae_round_trip": rt_scores,
                    "heldout": {}}
    best = None
    for g in cfg.eval_guidance:
        t0 = time.perf_counter()
        images = _generate(pipe, captions, cfg, g, seed=10_000)
        scored = score_many(images, captions)
        res = scored["results"]
        by_lang = {lang: {c: _percent([r for r, cap in zip(res, captions) if caption_language(cap) == lang], c)
                          for c in ("colour_shape", "position", "all")} for lang in ("en", "zh")}
        entry = {"percent": {k: round(v, 2) for k, v in scored["percent"].items()}, "by_language": by_lang,
                 "position_by_wording": scored["position_by_wording"],
                 "position_outcomes": scored["position_outcomes"], "seconds": round(time.perf_counter() - t0, 2)}
        report["heldout"][str(g)] = entry
        scores = " ".join(f"{k}={v:.1f}" for k, v in entry["percent"].items())
        wording = " ".join(f"{k}={v['percent']:.0f}" for k, v in scored["position_by_wording"].items())
        print(f"eval heldout guidance={g}: {scores} ({entry['seconds']}s); position by wording: {wording}", flush=True)
        key = (entry["percent"]["colour_shape"] + entry["percent"]["position"])
        if best is None or key > best[0]:
            best = (key, g, images)
    report["best_guidance"] = best[1]
    primary = report["heldout"][str(best[1])]["percent"]
    report["primary"] = {"guidance": best[1], "colour_shape": primary["colour_shape"], "position": primary["position"]}
    report["passes_bars"] = all(primary[k] >= v for k, v in BARS.items())
    grid(best[2][:32]).save(out / "samples_heldout.png")
    grid([s.image for s in samples[:32]]).save(out / "samples_heldout_reference.png")

    # in-distribution captions (train split, indices past the training set): is held-out harder?
    seen = SceneDataset(seed=cfg.seed, length=cfg.scenes + cfg.eval_n, size=cfg.size, split="train",
                        places_mix=cfg.places_mix)
    seen_caps = [seen.scene_and_caption(cfg.scenes + i)[1] for i in range(cfg.eval_n)]
    seen_scores = score_many(_generate(pipe, seen_caps, cfg, best[1], seed=20_000), seen_caps)["percent"]
    report["train_split"] = {k: round(v, 2) for k, v in seen_scores.items()}

    controlnet_dir = out / "controlnet"
    if (controlnet_dir / "config.json").is_file():
        cn = ControlNetModel.from_pretrained(str(controlnet_dir), torch_dtype=dtype).to(device)
        cpipe = StableDiffusionControlNetPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, controlnet=cn,
            scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        cpipe.set_progress_bar_config(disable=True)
        k = min(cfg.eval_controlnet_n, cfg.eval_n)
        conds = [Image.fromarray(canny_edges(s.image)).convert("RGB") for s in samples[:k]]
        cimages = _generate(cpipe, captions[:k], cfg, best[1], seed=30_000, image=conds)
        report["controlnet"] = {kk: round(v, 2) for kk, v in score_many(cimages, captions[:k])["percent"].items()}
        report["controlnet"]["n"] = k
        grid(conds[:8] + cimages[:8]).save(out / "samples_controlnet.png")
    report["criteria"] = list(CRITERIA)
    return report


# ---------------------------------------------------------------- the run

def _device(name: str):
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        from lightdiff.errors import InvalidRequest

        raise InvalidRequest("device", f"--device {name} was asked for but torch sees no CUDA device.",
                             "Run on a GPU machine, or use --device cpu (slow; --smoke for a quick check).")
    return torch.device(name)


def _preflight() -> None:
    """Fail in the first second, not after minutes, when a needed package is missing."""
    missing = []
    for module, package in (("torch", "torch"), ("diffusers", "diffusers"), ("transformers", "transformers"),
                            ("cv2", "opencv-python-headless"), ("matplotlib", "matplotlib"),
                            ("tokenizers", "tokenizers"), ("safetensors", "safetensors")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        from lightdiff.errors import LightdiffError

        raise LightdiffError(f"train-demo needs {', '.join(missing)}, which this Python cannot import.",
                             f"pip install {' '.join(missing)}")


def run(cfg: TrainConfig, argv: list[str] | None = None) -> dict:
    t_start = time.perf_counter()
    _preflight()
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    budget = cfg.minutes * 60.0
    deadlines = [t_start + budget * sum(cfg.split[:k + 1]) / sum(cfg.split) for k in range(3)]
    print(f"train-demo: out={out} minutes={cfg.minutes} seed={cfg.seed} device={cfg.device} scenes={cfg.scenes} "
          f"size={cfg.size}{' (smoke)' if cfg.smoke else ''}", flush=True)

    import torch

    device = _device(cfg.device)
    threads = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    renderer = SceneRenderer(cfg)  # its pool spawns (never forks), so CUDA state is never inherited
    try:
        return _train(cfg, argv, out, device, renderer, deadlines, t_start)
    finally:
        renderer.stop()
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, argv, out: Path, device, renderer: SceneRenderer, deadlines: list[float],
           t_start: float) -> dict:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from lightdiff.demo import model as demo
    from lightdiff.demo.vocab import build_tokenizer, echoes

    # a readable log: no per-save dtype notes, no shard or component progress bars
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    log = Log(out, t_start)
    summary: dict = {"command": shlex.join([sys.executable, *(argv if argv is not None else sys.argv)]),
                     "config": asdict(cfg), "seed": cfg.seed, "phases": {}, "errors": {}}

    components = demo.build_components(seed=cfg.seed, echo=cfg.echo)
    if cfg.init:
        components.update(load_trained(cfg.init))
        summary["init"] = cfg.init
    echo = echoes(components["tokenizer"])
    summary["echo"] = echo
    vae = components["vae"].to(device).to(memory_format=torch.channels_last)
    data = DeviceImages(renderer, device)

    # phase 1: VAE, while the scenes render. A continued run keeps its encoder (the UNet's latent space):
    # a non-zero share fine-tunes the decoder alone, a zero share skips the phase.
    p1 = None
    if not cfg.init or cfg.split[0] > 0:
        p1 = train_vae(cfg, vae, data, renderer, deadlines[0], log, device, decoder_only=bool(cfg.init))
    waited = time.perf_counter()
    n = renderer.wait_for(cfg.chunk, cfg.render_wait_s)
    print(f"scenes: {n} of {cfg.scenes} rendered at t={time.perf_counter() - t_start:.1f}s "
          f"(waited {time.perf_counter() - waited:.1f}s after phase 1); the rest stream in", flush=True)
    if n < 8:
        raise RuntimeError(f"only {n} scenes were rendered; nothing to train on")
    data.sync()
    stats = None
    if not cfg.init:  # a new encoder: fold its latent statistics into the quant convs
        stats = normalise_latents(vae, data.images[: min(data.copied, 4096)], device)
    vae.requires_grad_(False)
    half_copy(vae, cfg.fp16).save_pretrained(out / "vae", safe_serialization=True)
    print(f"saved the VAE at t={time.perf_counter() - t_start:.1f}s", flush=True)
    summary["phases"]["vae"] = {"steps": p1.step if p1 else 0, "seconds": round(p1.seconds(), 1) if p1 else 0.0,
                                "final_loss": log.final("vae"), "decoder_only": bool(cfg.init),
                                "batch": cfg.vae_batch, **(p1.info if p1 else {})}
    if stats is not None:
        summary["phases"]["vae"]["latent_stats_before_folding"] = stats

    # as many positions as the text encoder has (a continued folder's own: the first shipped weights had 32)
    tokenizer = build_tokenizer(components["text_encoder"].config.max_position_embeddings, echo=echo)
    store = LatentStore(cfg, vae, data, tokenizer, device)
    store.update()
    empty_ids = tokenize(tokenizer, [""], device)[0]
    print(f"encoded {store.count} scenes and their mirrors {tuple(store.latents.shape[1:])} "
          f"in {store.seconds:.1f}s", flush=True)

    # phase 2: UNet + text encoder
    from diffusers import DDPMScheduler

    spec_scheduler = demo.spec().components["scheduler"].config
    noise_scheduler = DDPMScheduler.from_config(dict(spec_scheduler))
    unet = components["unet"].to(device).to(memory_format=torch.channels_last)
    text_encoder = components["text_encoder"].to(device)
    p2 = None  # a continued run with a zero second share keeps the UNet and text encoder (a ControlNet-only run)
    if not cfg.init or cfg.split[1] > 0:
        p2 = train_unet(cfg, unet, text_encoder, store, empty_ids, noise_scheduler, deadlines[1], log, device)
    final = {"vae": half_copy(vae, cfg.fp16), "unet": half_copy(unet, cfg.fp16),
             "text_encoder": half_copy(text_encoder, cfg.fp16), "tokenizer": tokenizer,
             "scheduler": components["scheduler"]}
    demo.assemble_pipeline(final).save_pretrained(str(out), safe_serialization=True)
    del final
    summary["phases"]["unet"] = {"steps": p2.step if p2 else 0, "seconds": round(p2.seconds(), 1) if p2 else 0.0,
                                 "final_loss": log.final("unet"), "batch": cfg.unet_batch,
                                 "scenes_at_end": store.count, **(p2.info if p2 else {})}
    log.plot(out)
    print(f"saved the pipeline to {out} at t={time.perf_counter() - t_start:.1f}s", flush=True)

    # phase 3: canny ControlNet. The txt2img model is already on disk: a failure here is recorded, not fatal.
    try:
        controlnet = components.get("controlnet") or demo.build_controlnet(unet)
        # a zero share keeps a continued folder's ControlNet as it was (a new one still takes its one step)
        keep_controlnet = cfg.split[2] == 0 and components.get("controlnet") is not None
        p3 = None
        if not keep_controlnet:
            controlnet = controlnet.to(device).to(memory_format=torch.channels_last)
            p3 = train_controlnet(cfg, controlnet, unet, text_encoder, store, empty_ids, data.edges,
                                  noise_scheduler, deadlines[2], log, device)
        half_copy(controlnet, cfg.fp16).save_pretrained(out / "controlnet", safe_serialization=True)
        print(f"saved the ControlNet to {out / 'controlnet'} at t={time.perf_counter() - t_start:.1f}s", flush=True)
        summary["phases"]["controlnet"] = {"steps": p3.step if p3 else 0,
                                           "seconds": round(p3.seconds(), 1) if p3 else 0.0,
                                           "final_loss": log.final("controlnet"), "batch": cfg.cn_batch,
                                           **(p3.info if p3 else {})}
        del controlnet
    except Exception as e:  # noqa: BLE001 - recorded in summary.json and printed with its traceback
        traceback.print_exc()
        summary["errors"]["controlnet"] = repr(e)
    renderer.stop()  # the eval needs the CPU cores
    summary["scenes"] = {"used": store.count, "asked": cfg.scenes, "render_seconds": round(renderer.seconds or 0, 1),
                         "samples_with_mirrors": 2 * store.count, "encode_seconds": round(store.seconds, 1)}
    log.plot(out)
    summary["train_seconds"] = round(time.perf_counter() - t_start, 1)

    # free the training state before eval
    del store, data, unet, text_encoder, vae, components
    if device.type == "cuda":
        torch.cuda.empty_cache()

    t_eval = time.perf_counter()
    print(f"eval: {cfg.eval_n} held-out captions, {cfg.eval_steps} steps, guidance {cfg.eval_guidance}", flush=True)
    try:
        report = evaluate(cfg, out, device)
        report["seconds"] = round(time.perf_counter() - t_eval, 1)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        summary["eval"] = {"primary": report["primary"], "passes_bars": report["passes_bars"],
                           "heldout": {g: e["percent"] for g, e in report["heldout"].items()},
                           "train_split": report["train_split"], "controlnet": report.get("controlnet"),
                           "vae_round_trip": report["vae_round_trip"],
                           "seconds": report["seconds"]}
    except Exception as e:  # noqa: BLE001 - as above: the weights are saved, the summary still gets written
        traceback.print_exc()
        summary["errors"]["eval"] = repr(e)
    sizes = folder_bytes(out)
    summary["files"] = sizes
    summary["total_bytes"] = sum(sizes.values())
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def load_trained(folder: str) -> dict:
    """The trainable components of an earlier run's output folder, in float32 for training."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(folder)
    out = {"vae": AutoencoderKL.from_pretrained(root / "vae", torch_dtype=torch.float32),
           "unet": UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=torch.float32),
           "text_encoder": CLIPTextModel.from_pretrained(root / "text_encoder", torch_dtype=torch.float32)}
    if (root / "tokenizer").is_dir():  # only read for its echo setting; the run builds its own from the code
        from transformers import AutoTokenizer

        out["tokenizer"] = AutoTokenizer.from_pretrained(root / "tokenizer")
    if (root / "controlnet").is_dir():
        out["controlnet"] = ControlNetModel.from_pretrained(root / "controlnet", torch_dtype=torch.float32)
    return out


def _print_summary(s: dict) -> None:
    print("\n=== train-demo summary ===", flush=True)
    for name, p in s["phases"].items():
        loss = p["final_loss"]
        how = ""
        if "compiled" in p:
            how = f" ({'compiled' if p['compiled'] else 'eager'}, first step {p['first_step_seconds']}s)"
        print(f"{name:>10}: {p['steps']} steps in {p['seconds']}s{how}, final loss {loss:.5f}" if loss is not None
              else f"{name:>10}: {p['steps']} steps in {p['seconds']}s{how}", flush=True)
    for name, error in s["errors"].items():
        print(f"{name:>10}: FAILED {error}", flush=True)
    e = s.get("eval")
    if e:
        p = e["primary"]
        print(f"held-out (guidance {p['guidance']}): colour+shape {p['colour_shape']:.1f}% "
              f"(bar {BARS['colour_shape']:.0f}), position {p['position']:.1f}% (bar {BARS['position']:.0f}) "
              f"-> {'PASS' if e['passes_bars'] else 'below the bars'}", flush=True)
        for g, percent in e["heldout"].items():
            print(f"  guidance {g}: colour+shape {percent['colour_shape']:.1f}%, position {percent['position']:.1f}%, "
                  f"all {percent['all']:.1f}%", flush=True)
        t = e["train_split"]
        print(f"  train-split captions: colour+shape {t['colour_shape']:.1f}%, position {t['position']:.1f}%",
              flush=True)
        v = e["vae_round_trip"]
        print(f"  VAE round trip of the true renders (the ceiling): colour+shape {v['colour_shape']:.1f}%, "
              f"position {v['position']:.1f}%, count {v['count']:.1f}%", flush=True)
    for name, size in s["files"].items():
        print(f"  {name}: {size / 1e6:.2f} MB", flush=True)
    print(f"total {s['total_bytes'] / 1e6:.2f} MB; wall {s['wall_seconds']}s (training {s['train_seconds']}s)",
          flush=True)


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder: a diffusers folder plus controlnet/, logs, eval")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget from start to the end of training (default 8; eval and saving add ~0.7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda (default), cuda:N or cpu")
    p.add_argument("--smoke", action="store_true",
                   help="CPU check of every code path: 64x64, tiny data, a few steps per phase, a tiny eval")
    p.add_argument("--scenes", type=int, default=None, help="training scenes to render (default 100000)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: CPU cores - 1, max 15)")
    p.add_argument("--unet-batch", type=int, default=None, help="UNet phase batch size (default 512)")
    p.add_argument("--cn-batch", type=int, default=None, help="ControlNet phase batch size (default 256)")
    p.add_argument("--eval-n", type=int, default=None, help="held-out captions to generate (default 200)")
    p.add_argument("--vae-batch", type=int, default=None, help="VAE phase batch of whole images (default 32)")
    p.add_argument("--unet-lr", type=float, default=None, help="UNet + text encoder peak learning rate (default 5e-4)")
    p.add_argument("--compile-mode", choices=["default", "reduce-overhead"], default=None,
                   help="with --compile: torch.compile's mode; reduce-overhead adds CUDA graphs (not yet measured "
                        "in a training run)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture each phase's training step (forward, backward, clipping, AdamW) as one CUDA graph "
                        "and replay it: seconds to capture, no compiling (default: on with CUDA)")
    p.add_argument("--echo", action=argparse.BooleanOptionalAction, default=None,
                   help="a new model's tokenizer writes each caption twice, so the causal text encoder's second copy "
                        "has read the whole caption (default on, as the shipped weights); --init keeps its folder's")
    p.add_argument("--pair-layout", choices=["free", "halves"], default=None,
                   help="how two related objects are placed in training scenes: halves (default, the shipped "
                        "weights': across the centre line, as a lone object's place) or free (anywhere the relation "
                        "holds)")
    p.add_argument("--grounding-weight", type=float, default=None,
                   help="weight of the grounding loss: each object's words attend to its own mask in the UNet's "
                        "cross-attention (TokenCompose-style; default 0: off, as the shipped weights)")
    p.add_argument("--grounding-min-t", type=int, default=None,
                   help="with --grounding-weight: ground only samples noised at this timestep or later, of 1000 "
                        "(default 0: all; the layout is decided at high noise)")
    p.add_argument("--places-mix", type=float, default=None,
                   help="share of relations captioned 'on the left A, on the right B' in training and eval (default 0)")
    p.add_argument("--fp32", action="store_true", help="save fp32 weights instead of fp16")
    p.add_argument("--init", help="continue from an earlier run's output folder: its VAE encoder (the latent space) "
                                  "is kept; a non-zero first --split share fine-tunes the decoder alone")
    p.add_argument("--split", help="shares of --minutes for VAE, UNet+text and ControlNet (default 0.3,0.62,0.08; "
                                   "with --init e.g. 0,0.92,0.08)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the VAE and UNet loss functions (default off: compiling costs more of a "
                        "10-minute run than it saves)")


def parse_split(text: str, continued: bool) -> tuple[float, float, float]:
    """'0.3,0.62,0.08' -> shares of the budget for VAE, UNet+text, ControlNet. A new model needs a VAE and a
    UNet share; a continued run (--init) may skip either (0,0,1 trains the ControlNet alone)."""
    from lightdiff.errors import InvalidRequest

    try:
        shares = tuple(float(x) for x in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or any(not v >= 0 for v in shares) or sum(shares) <= 0:
        raise InvalidRequest("split", f"--split {text!r} is not three non-negative shares with a positive sum.",
                             "Write it like 0.3,0.62,0.08 (VAE, UNet + text encoder, ControlNet).")
    if not continued and (shares[0] == 0 or shares[1] == 0):
        raise InvalidRequest("split", f"--split {text!r} gives a new model no VAE or no UNet time.",
                             "Give both a share, or continue an earlier run with --init DIR.")
    return shares


def config_from_args(args) -> TrainConfig:
    chosen = {k: v for k, v in {"minutes": args.minutes, "seed": args.seed, "device": args.device,
                                 "scenes": args.scenes, "workers": args.workers, "unet_batch": args.unet_batch,
                                 "cn_batch": args.cn_batch,
                                 "eval_n": args.eval_n, "init": args.init, "vae_batch": args.vae_batch,
                                 "unet_lr": args.unet_lr, "compile": args.compile,
                                 "places_mix": args.places_mix, "echo": args.echo,
                                 "pair_layout": args.pair_layout,
                                 "grounding_weight": args.grounding_weight,
                                 "grounding_min_t": args.grounding_min_t}.items() if v is not None}
    if args.compile_mode is not None:
        if not args.compile:
            from lightdiff.errors import InvalidRequest

            raise InvalidRequest("compile_mode", f"--compile-mode {args.compile_mode} needs --compile.",
                                 "Add --compile, or drop --compile-mode.")
        chosen["compile_mode"] = None if args.compile_mode == "default" else args.compile_mode
    if args.cuda_graph is False:
        chosen["cuda_graph"] = False
    if args.cuda_graph:
        from lightdiff.errors import InvalidRequest

        if args.compile_mode == "reduce-overhead":
            raise InvalidRequest("cuda_graph", "--cuda-graph and --compile-mode reduce-overhead both capture CUDA graphs.",
                                 "Use one: --cuda-graph (the whole step; may be combined with --compile) or "
                                 "--compile --compile-mode reduce-overhead.")
        if args.smoke or (args.device or "cuda").startswith("cpu"):
            raise InvalidRequest("cuda_graph", "--cuda-graph needs a CUDA device; this run trains on the CPU.",
                                 "Drop --cuda-graph, or train with --device cuda.")
        chosen["cuda_graph"] = True
    if args.init and not all((Path(args.init) / part / "config.json").is_file()
                             for part in ("vae", "unet", "text_encoder")):
        from lightdiff.errors import InvalidRequest

        raise InvalidRequest("init", f"--init {args.init!r} is not a folder written by train-demo "
                                     "(it needs vae/, unet/ and text_encoder/ with their config.json).",
                             "Point it at an earlier run's --out folder, e.g. src/lightdiff/data/demo.")
    if args.places_mix is not None and not 0.0 <= args.places_mix <= 1.0:
        from lightdiff.errors import InvalidRequest

        raise InvalidRequest("places_mix", f"--places-mix {args.places_mix} is not a fraction.",
                             "Use 0 (relations as 'A left of B', the default) to 1 (all 'on the left A, ...').")
    if args.grounding_weight is not None and not args.grounding_weight >= 0:
        from lightdiff.errors import InvalidRequest

        raise InvalidRequest("grounding_weight", f"--grounding-weight {args.grounding_weight} is negative.",
                             "Use 0 (off, the default) or a positive weight such as 0.1.")
    if args.grounding_min_t is not None and not 0 <= args.grounding_min_t < 1000:
        from lightdiff.errors import InvalidRequest

        raise InvalidRequest("grounding_min_t", f"--grounding-min-t {args.grounding_min_t} is not a timestep.",
                             "Use 0 (every sample, the default) to 999, e.g. 600 for the noisiest 40%.")
    if args.split:
        chosen["split"] = parse_split(args.split, bool(args.init))
    if args.fp32:
        chosen["fp16"] = False
    if args.smoke:
        return TrainConfig.smoke_preset(args.out, **chosen)
    return TrainConfig(out=args.out, **chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightdiff.demo.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    given = argv if argv is not None else sys.argv[1:]
    from lightdiff.errors import LightdiffError

    try:
        cfg = config_from_args(args)
    except LightdiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = run(cfg, argv=["-m", "lightdiff.demo.train", *given])
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
