"""The planner's cost model: bytes, peak VRAM, host RAM and seconds per image, without torch.

Every number here is either CALIBRATED (fitted to the measured H100 rows in
shared/reference/h100-random-weights-2026-11-26.jsonl and baselines.md, named in the comment
beside it) or ASSUMED (a reasoned guess, marked so, that tools/validate_planner.py measures).
"GB" in lightdiff means GiB (2**30 bytes), as torch and the measured rows report memory.

Memory (GiB): peak = weights on the GPU + runtime overhead + the largest transient of
  - denoising: denoiser activations (+ prefetch buffers of streamed blocks),
  - VAE decode: linear in decoded pixels (the whole batch at once unless slicing; one tile when tiling),
  - prompt encoding: the text encoder's transient (its streamed layers and activations).
Both families' measured peaks are VAE-decode peaks, linear in megapixels x batch:
  sd15: peak = 1.986 (weights) + 0.069 + 2.265 * MP * batch   (5 rows, max error 0.01 GiB)
  qwen: peak = 38.291 (weights) + 0.040 + 3.955 * MP          (3 rows, max error 0.01 GiB)
Time: per denoiser call (CFG in one batched call for sd15; true CFG = two calls for Qwen)
  t_call = call_overhead + items * TFLOP_item / (card bf16 peak * efficiency)
and the VAE decode at the same efficiency. Fitted by least squares on the H100 rows:
  sd15: call_overhead 25.4 ms (launch-bound at batch 1), efficiency 0.497 (errors -5%..+7%)
  qwen: call_overhead 65.7 ms, efficiency 0.604 (errors -7%..+10%; the 512 row is the outlier)
Other cards: the same efficiency times their datasheet peak, the same per-call overhead (CPU-side
launch cost) -- ASSUMED, unmeasured off the H100.
The engine's speed path changes the time, not the memory: fp8 compute is priced compiled
(FP8_COMPILED_COMPUTE_FACTOR), and SD1.5's txt2img with Euler, which runs as a compiled loop of CUDA graphs, is
priced by its own overhead and factor (SD15_LOOP_*) where the request says it runs that loop (compiled_loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightdiff.runtime import plan_flops
from lightdiff.specs.cards import Card, find_card

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "int8": 1}

# fits iff predicted_peak * (1 + VRAM_MARGIN_FRAC) + VRAM_MARGIN_GIB <= budget. The measured peaks are
# torch's allocated bytes; the allocator reserves more (fragmentation: 0.2-2 GiB in the H100 rows)
# and a real card also holds the CUDA context (~0.5 GiB). ASSUMED; validate_planner.py checks it.
VRAM_MARGIN_GIB = 0.5
VRAM_MARGIN_FRAC = 0.05
# Host RAM a generating process holds besides weights (Python, torch, CUDA libraries). ASSUMED, then checked: the
# engine's qwen-image-2512 process under 24 GB held 2.15 GiB beside its 15.45 GiB pinned text encoder (H100 host,
# 2026-11-28), once the host copies freed while placing were returned (runtime/host_memory.py; before, 11.4 GiB).
HOST_BASE_GIB = 3.0
HOST_MARGIN_GIB = 1.0

# Streamed weights (group offloading with CUDA streams) live in pinned host RAM. diffusers pins each tensor with
# Tensor.pin_memory(), and torch's caching host allocator rounds every block up to a power of two: MEASURED, 31.25 GB
# pinned for 716 tensors of 16.49 GB shaped as Qwen-Image's text encoder, exactly the sum of their sizes rounded up
# (tools/pin_bench.py, H100 host, 2026-11-27). (component class, params_M) -> pinned bytes / weight bytes of what
# is streamed from it (a transformer's blocks, else the whole component), computed from the architectures' tensor
# shapes (a test recomputes them on the meta device); at most 2x where the architecture is not in the table.
# Pinned in place (runtime/pinned.py, the default; LIGHTDIFF_PIN_IN_PLACE=0 turns it off) they take their own size.
PINNED_ROUNDING = {
    ("Qwen2_5_VLForConditionalGeneration", 8292.17): 1.8921,
    ("QwenImageTransformer2DModel", 20430.4): 1.5802,
    ("CLIPTextModel", 123.06): 1.7742,
    ("UNet2DConditionModel", 859.52): 1.2065,
}
PINNED_ROUNDING_MAX = 2.0


def pinned_gib(weights_gib: float, spec, component: str) -> float:
    """Host RAM that ``weights_gib`` of ``component``'s streamed weights take once pinned."""
    from lightdiff.runtime import pinned

    if pinned.enabled():
        return weights_gib
    comp = spec.components[component]
    return weights_gib * PINNED_ROUNDING.get((comp.cls, round(comp.params_M or 0.0, 2)), PINNED_ROUNDING_MAX)


# fp8 layerwise casting re-casts every weight twice per forward (fp8->bf16 before, bf16->fp8 after):
# about 6 bytes of memory traffic per parameter. CALIBRATED: qwen-image-2512 at 1024 with fp8
# storage + VAE tiling took 11.7 s vs 7.47 s bf16 on the H100 (baselines.md, allocator capped at
# 24 GB): 106 ms per forward for 20.4 B parameters = 35% of the card's datasheet bandwidth.
CAST_BYTES_PER_PARAM = 6
CAST_BANDWIDTH_EFFICIENCY = 0.346
# Group offloading with CUDA streams moves pinned weights at the card's measured host-to-device
# rate (Card.pcie_gbps, GB/s): CALIBRATED on the one H100 row, bf16 block-level group offload of all
# 60 blocks at 24 GB: 32.5 s for 40 forwards of 40.9 GB each = 50 GB/s, i.e. the full pcie_gbps.
PCIE_EFFICIENCY = 1.0
GROUP_SYNC_S = 1e-4  # per streamed group per forward: hook + stream sync. ASSUMED (small; not separable)
# accelerate's model/sequential offload copies from pageable memory and does not overlap: ASSUMED half rate.
PAGEABLE_EFFICIENCY = 0.5
# A paged text encoder (leaf-level group offloading without a stream) moves its weights, in and back out, at this
# many GB of weights per second. MEASURED on an H100 host (2026-11-28, docs/benchmarks/2026-11-28-h100): 16.49 GB in
# 11.86 s (tools/pin_bench.py, every layer) and 12.68 s per new prompt through the engine (qwen-image-2512), where
# the same weights streamed from pinned memory at 39 GB/s. The host bounds it, not the bus: each copy back out
# allocates fresh pageable memory. Assumed the same on other hosts.
PAGED_TE_GBPS = 1.3
# torchao int8 weight-only at diffusion sizes (thousands of tokens per matmul) is assumed to
# dequantize each weight per call: read 1 byte, write and read 2 -- like the fp8 casts but one way.
# ASSUMED, not measured (torchao is not on the measured machine); so `choose` never picks it itself.
INT8_DEQUANT_BYTES_PER_PARAM = 3
# fp8 compute (runtime/fp8.py), compiled, as the engine's speed path runs it: a denoiser call's time as a
# share of the bf16 compute model's. CALIBRATED on the engine's rows with fast accumulation, the compiled
# blocks replayed as CUDA graphs and lightdiff's Qwen attention (runtime/qwen_attention.py; all defaults):
# qwen-image-2512 1024 under 24 GB, half tiles, measured 4.242 and 4.261 s (a cold and a warm process, medians
# of 3; H100, 2026-11-28, docs/benchmarks/2026-11-28b-h100), predicted 4.25 s. Before: 0.343, from the row
# with diffusers' attention (4.32 s, 2026-11-27e; 4.315 s on 2026-11-28), 0.39, from the same row without CUDA
# graphs (4.55 s, 2026-11-27d), and 0.6, from an eager profile with row-wise accumulation. At 512 the compiled blocks are CPU-bound (3.63 s measured row-wise), which this model
# does not see. Other fp8 cards are assumed to keep the H100's fp8/bf16 ratio (2x in specs/cards.py).
FP8_COMPILED_COMPUTE_FACTOR = 0.328
# SD1.5's txt2img with Euler under the engine's speed path (runtime/fastpath.SD15GraphLoop: each step one replayed
# CUDA graph, channels_last, compiled decoder): the per-call overhead and a factor on the compute model's UNet
# time. CALIBRATED on the engine's rows at 512 on an H200 (same bf16 peak as the H100; 2026-11-28,
# docs/benchmarks/2026-11-28c-h200): batch 1 0.139 s per image (validate_planner, medians of 7), batch 16 10.83
# images/s (speed_bench, precompiled loop); the two rows give 2.49 ms and 1.286 exactly. The compute model's own
# overhead (25.4 ms a call) is the eager pipeline's launch cost, which the graphs remove; the factor says the
# compiled UNet runs at 39% of the peak where the eager fit across sizes says 50%. Sizes other than 512 are
# ASSUMED to scale with the counted FLOPs (no compiled-loop row at 768 or 1024 yet).
SD15_LOOP_CALL_OVERHEAD_S = 0.0025
SD15_LOOP_COMPUTE_FACTOR = 1.29


@dataclass(frozen=True)
class FamilyProfile:
    """What the cost model knows about a family (calibration sources in the module docstring)."""

    denoiser: str
    calls_per_step: int  # denoiser calls per step: 1 (CFG batched), 2 (true CFG: two forwards)
    items_per_call: int  # batch items per call per image: 2 for batched CFG, 1 otherwise
    blocks_attr: str | None  # ModuleList that group offloading can stream part of (None: all or nothing)
    vae_gib_per_mpx: float  # CALIBRATED: VAE decode activations per decoded megapixel
    vae_tile_px: int  # diffusers' tile side for tiled decode (AutoencoderKL: sample_size; Qwen: 256)
    den_gib_per_mpx: float  # denoiser activations per image megapixel
    overhead_gib: float  # CALIBRATED: allocated beyond weights when idle (buffers, workspaces)
    call_overhead_s: float  # CALIBRATED on H100
    efficiency: float  # CALIBRATED on H100: achieved fraction of the card's bf16 peak
    te_act_gib: float  # ASSUMED: text encoder activations at the longest prompt
    stream_group_params_M: float  # params of the largest streamed group (two are on the GPU at once)
    # the VAE also decodes in two-by-two tiles (``half_tile_px``): diffusers' Qwen VAE takes any tile size
    vae_half_tiles: bool = False
    vae_tile_stride_px: int = 0  # diffusers' stride between default tiles (0: the tile side)
    vae_tile_overhead_s: float = 0.0  # per decoded tile, beyond the FLOPs of its pixels
    # the engine's compiled loop where it runs (SD1.5 txt2img with Euler, --fast auto, CUDA):
    # (call overhead s, compute factor on this model's compute time); None: no such loop
    compiled_loop: tuple[float, float] | None = None


PROFILES = {
    "sd15": FamilyProfile(
        denoiser="unet", calls_per_step=1, items_per_call=2, blocks_attr=None,
        vae_gib_per_mpx=2.265, vae_tile_px=512,
        # ASSUMED: the UNet's activations never set the measured peak (VAE decode did), so only an
        # upper bound is known; 1.0 GiB/MP keeps it below the VAE's 2.27 as the rows require.
        den_gib_per_mpx=1.0,
        overhead_gib=0.069, call_overhead_s=0.0254, efficiency=0.497, te_act_gib=0.05,
        stream_group_params_M=258.3 + 162.2,  # the two largest up_blocks
        vae_tile_stride_px=384,  # AutoencoderKL: tile_overlap_factor 0.25. Per-tile overhead unmeasured: 0
        compiled_loop=(SD15_LOOP_CALL_OVERHEAD_S, SD15_LOOP_COMPUTE_FACTOR),
    ),
    "qwen-image": FamilyProfile(
        denoiser="transformer", calls_per_step=2, items_per_call=1, blocks_attr="transformer_blocks",
        vae_gib_per_mpx=3.955, vae_tile_px=256, vae_half_tiles=True,
        # CALIBRATED (upper bound): fp8 storage + VAE tiling at 1024 peaked 0.41 GiB over idle.
        den_gib_per_mpx=0.39,
        overhead_gib=0.040, call_overhead_s=0.0657, efficiency=0.604,
        te_act_gib=0.35,  # logits of a 1024-token prompt over a 152k vocabulary in bf16: 0.3 GiB
        stream_group_params_M=340.0,
        # CALIBRATED (H100, 2026-11-27, 1024 under a 24 GB cap, docs/benchmarks/2026-11-27c-h100): decode 0.81 s
        # in 36 default tiles and 0.10 s in 4 half tiles; the FLOPs of the pixels they decode (1.81 and 1.18 MP)
        # explain 0.034 and 0.022 s, the rest is 0.0216 and 0.0195 s per tile
        vae_tile_stride_px=192, vae_tile_overhead_s=0.02,
    ),
}

# Blocks of the streamed ModuleList, by denoiser class: (count, params_M of all of them together).
# Counted on the meta device (test_plan_estimate checks them against the built architecture).
BLOCKS = {
    ("QwenImageTransformer2DModel", 20430.4): (60, 20389.88),
    ("QwenImageTransformer2DModel", 0.19): (2, 0.168896),
}
# Leaf-level streaming of the text encoder holds the leaf that computes and the next one, prefetched on a
# CUDA stream. The largest leaves are the token embedding and lm_head (first and last, never together);
# the prefetched neighbour is at most a decoder MLP projection. params_M.
TE_LARGEST_LEAF_M = {"qwen-image": 545.0, "sd15": 37.9}  # Qwen2.5-VL-7B 152064 x 3584; CLIP-L 49408 x 768
TE_PREFETCH_LEAF_M = {"qwen-image": 67.9, "sd15": 2.4}  # 3584 x 18944; 768 x 3072

REFERENCE_CARD = "H100 80GB"  # speeds are for this card when none is named


@dataclass(frozen=True)
class Request:
    """What one estimate is for: a model at a size and batch, under a budget, on a card."""

    spec: object
    width: int
    height: int
    batch: int
    steps: int
    vram_gb: float | None  # None: no limit (CPU, or unknown)
    ram_gb: float | None
    card: Card
    # weights a workflow adds on the GPU beside the model's own (a ControlNet), in the compute dtype
    extra_params_M: float = 0.0
    # the request runs the engine's compiled loop where the family has one (FamilyProfile.compiled_loop)
    compiled_loop: bool = False

    @property
    def extra_gib(self) -> float:
        return gib(self.extra_params_M, compute_dtype(self.spec))

    @property
    def mpx(self) -> float:
        return self.width * self.height / 1e6

    @property
    def profile(self) -> FamilyProfile:
        return PROFILES[self.spec.family]

    @property
    def usable_vram_gb(self) -> float:
        """The most a predicted peak may be and still count as fitting (the margin taken off)."""
        if self.vram_gb is None:
            return math.inf
        return (self.vram_gb - VRAM_MARGIN_GIB) / (1 + VRAM_MARGIN_FRAC)

    @property
    def usable_ram_gb(self) -> float:
        return math.inf if self.ram_gb is None else self.ram_gb - HOST_MARGIN_GIB


def make_request(spec, width: int, height: int, batch: int = 1, steps: int | None = None,
                 vram_gb: float | None = None, ram_gb: float | None = None, card: Card | str | None = None,
                 extra_params_M: float = 0.0, compiled_loop: bool = False) -> Request:
    if isinstance(card, str):
        card = find_card(card)
    return Request(spec, int(width), int(height), int(batch), int(steps or spec.defaults.steps),
                   vram_gb, ram_gb, card or find_card(REFERENCE_CARD), float(extra_params_M), bool(compiled_loop))


def gib(params_M: float, dtype: str) -> float:
    return params_M * 1e6 * BYTES[dtype] / GIB


def compute_dtype(spec) -> str:
    return spec.rules.compute_dtype


def has_text_encoder(spec) -> bool:
    return "text_encoder" in spec.components and spec.params_M("text_encoder") > 0


# --- activations ---------------------------------------------------------------------------------


def denoise_act_gib(r: Request) -> float:
    return r.profile.den_gib_per_mpx * r.mpx * r.batch


# How the VAE decodes: False, whole images; True, diffusers' default tiles; an int, square tiles of that side.
Tiling = bool | int
HALF_TILE_OVERLAP_PX = 64


def half_tile_px(r: Request) -> int | None:
    """Tiles of half the image plus an overlap, at a stride of half the image: 2 x 2 tiles, each pixel decoded
    about once. MEASURED (H100, 2026-11-27, qwen-image-2512 1024 under a 24 GB cap, docs/benchmarks/
    2026-11-27c-h100): decode 0.10 s against 0.81 s with diffusers' 256-px tiles (36 tiles), 1.04 GB more
    peak. None where the family's VAE cannot, or where the default tile is already as large."""
    px = max(r.width, r.height) // 2 + HALF_TILE_OVERLAP_PX
    return px if r.profile.vae_half_tiles and px > r.profile.vae_tile_px else None


def half_tile_stride(tile_px: int) -> int:
    """Where the next half tile starts: each overlaps its neighbour by ``HALF_TILE_OVERLAP_PX``."""
    return tile_px - HALF_TILE_OVERLAP_PX


def vae_tile_modes(r: Request) -> list[Tiling]:
    """Decode modes to try: whole images, half tiles, default tiles (the fastest that fits is kept)."""
    half = half_tile_px(r)
    return [False, True] if half is None else [False, half, True]


def tile_side(r: Request, tiling: Tiling) -> int | None:
    if tiling is False:
        return None
    return r.profile.vae_tile_px if tiling is True else int(tiling)


def tile_grid(r: Request, tiling: Tiling) -> tuple[int, float]:
    """Tiles per image and the megapixels they decode (overlaps counted each time), walking the image as
    diffusers' tiled decode does: tiles start every stride, edge tiles are cut at the border, and an image
    no larger than one tile is decoded whole."""
    tile = tile_side(r, tiling)
    if tile is None or (r.width <= tile and r.height <= tile):
        return 1, r.mpx
    stride = (r.profile.vae_tile_stride_px or tile) if tiling is True else half_tile_stride(tile)
    rows = [min(tile, r.height - i) for i in range(0, r.height, stride)]
    cols = [min(tile, r.width - j) for j in range(0, r.width, stride)]
    return len(rows) * len(cols), sum(rows) * sum(cols) / 1e6


def vae_act_gib(r: Request, tiling: Tiling, slicing: bool) -> float:
    """VAE decode activations: linear in the pixels decoded at once (one tile when tiling)."""
    per_image_mpx = r.mpx
    if tiling:
        tile = tile_side(r, tiling)
        per_image_mpx = min(per_image_mpx, tile * tile / 1e6)
    images = 1 if (slicing or tiling) else r.batch
    return r.profile.vae_gib_per_mpx * per_image_mpx * images


def te_stream_gib(r: Request) -> float:
    """Transient of a leaf-level streamed text encoder: its largest leaf, the neighbour prefetched beside it,
    and activations. MEASURED (H100, 2026-11-27, qwen-image-2512 under 12/16 GB caps): the whole transient
    above the resident weights was at most 1.04 GiB with a short prompt, where counting the two largest leaves
    (2.03 GiB + activations) had over-predicted every peak by 1.34-1.6 GiB."""
    leaves = TE_LARGEST_LEAF_M.get(r.spec.family, 0.0) + TE_PREFETCH_LEAF_M.get(r.spec.family, 0.0)
    return gib(leaves, compute_dtype(r.spec)) + r.profile.te_act_gib


# --- time ------------------------------------------------------------------------------------------


def _flops(r: Request, component: str) -> float:
    """TFLOP per batch item; counted table, else 2 * params * tokens (a rough stand-in, said in the reason)."""
    counted = plan_flops.tflops(r.spec, component, r.width, r.height)
    if counted is not None:
        return counted
    tokens = r.mpx * 1e6 / (256 if component == "transformer" else 64)
    return 2 * r.spec.params_M(component) * 1e6 * tokens / 1e12


def flops_known(r: Request) -> bool:
    return plan_flops.tflops(r.spec, r.profile.denoiser, r.width, r.height) is not None


def rate_tflops(r: Request) -> float:
    return r.card.bf16_tflops * r.profile.efficiency


def call_compute_s(r: Request, compute_factor: float = 1.0) -> float:
    """One denoiser call for the whole batch, all weights on the GPU in the compute dtype."""
    p = r.profile
    items = p.items_per_call * r.batch
    return p.call_overhead_s + compute_factor * items * _flops(r, p.denoiser) / rate_tflops(r)


def loop_call_s(r: Request) -> float | None:
    """One denoiser call in the engine's compiled loop, where ``r`` runs it (else None)."""
    loop = r.profile.compiled_loop
    if not r.compiled_loop or loop is None:
        return None
    overhead, factor = loop
    return overhead + factor * (call_compute_s(r) - r.profile.call_overhead_s)


def vae_s(r: Request, tiling: Tiling) -> float:
    """Decode seconds for the batch: the FLOPs of every decoded pixel (overlaps included) plus, when tiled,
    the family's per-tile overhead."""
    tiles, decoded_mpx = tile_grid(r, tiling)
    per_image = _flops(r, "vae") * decoded_mpx / r.mpx / rate_tflops(r)
    if tiles > 1:
        per_image += tiles * r.profile.vae_tile_overhead_s
    return r.batch * per_image


def cast_s_per_call(r: Request, params_M: float, bytes_per_param: float = CAST_BYTES_PER_PARAM) -> float:
    """fp8 layerwise casting (or int8 dequantizing) of params_M parameters, once per denoiser call."""
    return params_M * 1e6 * bytes_per_param / (r.card.mem_gbps * 1e9 * CAST_BANDWIDTH_EFFICIENCY)


def transfer_s(r: Request, gib_: float, pinned: bool = True) -> float:
    rate = r.card.pcie_gbps * 1e9 * (PCIE_EFFICIENCY if pinned else PAGEABLE_EFFICIENCY)
    return gib_ * GIB / rate


def te_paged_encode_s(r: Request, te_gib: float) -> float:
    """Seconds a paged text encoder adds to encoding a new prompt: every weight copied in from pageable host RAM
    and back out (diffusers' group offloading without a stream). Not in seconds_per_image: prompts are cached."""
    return te_gib * GIB / (PAGED_TE_GBPS * 1e9)


def seconds_per_image(r: Request, per_call_s: float, tiling: Tiling, per_image_extra_s: float = 0.0) -> float:
    calls = r.steps * r.profile.calls_per_step
    return (calls * per_call_s + vae_s(r, tiling) + per_image_extra_s * r.batch) / r.batch


# --- partial group offloading: which blocks stay, which stream, which are stored in fp8 ------------


@dataclass(frozen=True)
class BlockLayout:
    """Placement of the denoiser's blocks for group offloading.

    n blocks; ``resident_fp8`` of the resident ones are stored in fp8 (the rest in the compute dtype);
    ``streamed`` blocks live in pinned host RAM and are copied in on a CUDA stream one block ahead of
    use, stored as ``streamed_dtype`` ("fp8" or the compute dtype). Streamed blocks are spread evenly
    through the stack so each copy overlaps the compute of the resident blocks before it.
    """

    n: int
    streamed: int
    resident_fp8: int
    streamed_dtype: str

    @property
    def resident(self) -> int:
        return self.n - self.streamed

    def streamed_indices(self) -> list[int]:
        return spread(self.n, self.streamed)

    def fp8_resident_indices(self) -> list[int]:
        resident = [i for i in range(self.n) if i not in set(self.streamed_indices())]
        return [resident[i] for i in spread(len(resident), self.resident_fp8)]

    def to_dict(self) -> dict:
        return {"blocks": self.n, "streamed": self.streamed, "resident": self.resident,
                "resident_fp8": self.resident_fp8, "streamed_dtype": self.streamed_dtype}


def spread(n: int, k: int) -> list[int]:
    """k of range(n), evenly spaced (the last of each stretch, so block 0 is resident when k < n)."""
    return [i for i in range(n) if (i + 1) * k // n > i * k // n]


def block_info(spec, denoiser: str) -> tuple[int, float] | None:
    comp = spec.components[denoiser]
    return BLOCKS.get((comp.cls, round(comp.params_M or 0.0, 2)))


@dataclass(frozen=True)
class LayoutCost:
    layout: BlockLayout
    gpu_weights_gib: float  # denoiser weights resident on the GPU (blocks + the small top-level layers)
    buffers_gib: float  # streamed blocks in flight (the one computing and the one being copied)
    host_gib: float  # streamed blocks in pinned host RAM (pinned_gib)
    per_call_s: float


def layout_cost(r: Request, layout: BlockLayout) -> LayoutCost:
    """Seconds per denoiser call and bytes for a block layout (see BlockLayout)."""
    dt = compute_dtype(r.spec)
    den = r.profile.denoiser
    n, blocks_M = block_info(r.spec, den)
    per_block_M = blocks_M / n
    top_M = r.spec.params_M(den) - blocks_M
    b_c, b_8 = gib(per_block_M, dt), gib(per_block_M, "fp8")
    b_s = b_8 if layout.streamed_dtype == "fp8" else b_c
    resident_gib = gib(top_M, dt) + (layout.resident - layout.resident_fp8) * b_c + layout.resident_fp8 * b_8
    buffers = min(layout.streamed, 2) * b_s
    compute = call_compute_s(r)
    fp8_blocks = layout.resident_fp8 + (layout.streamed if layout.streamed_dtype == "fp8" else 0)
    # The copies run on their own stream while resident blocks compute; what does not overlap stalls.
    copy = transfer_s(r, layout.streamed * b_s)
    stall = max(0.0, copy - (compute - r.profile.call_overhead_s))
    per_call = (compute + stall + layout.streamed * GROUP_SYNC_S
                + cast_s_per_call(r, fp8_blocks * per_block_M))
    return LayoutCost(layout, resident_gib, buffers, pinned_gib(layout.streamed * b_s, r.spec, den), per_call)


def best_layout(r: Request, room_gib: float, allow_fp8: bool) -> LayoutCost | None:
    """The fastest layout whose resident weights and buffers fit in room_gib; None if none does.

    For each count of streamed blocks (and their storage dtype), keep as many resident blocks in the
    compute dtype as fit and store the other resident ones in fp8; then take the fastest."""
    info = block_info(r.spec, r.profile.denoiser)
    if info is None:
        return None
    n, _ = info
    best = None
    for streamed_dtype in (["fp8", compute_dtype(r.spec)] if allow_fp8 else [compute_dtype(r.spec)]):
        for streamed in range(n + 1):
            fp8_counts = _fp8_counts(r, room_gib, streamed, streamed_dtype) if allow_fp8 else [0]
            for resident_fp8 in fp8_counts:
                cost = layout_cost(r, BlockLayout(n, streamed, resident_fp8, streamed_dtype))
                if cost.gpu_weights_gib + cost.buffers_gib > room_gib:
                    continue
                if best is None or cost.per_call_s < best.per_call_s - 1e-9:
                    best = cost
    return best


def _fp8_counts(r: Request, room_gib: float, streamed: int, streamed_dtype: str) -> list[int]:
    """The fewest fp8 resident blocks that fit (fewer casts are faster), or every count when none does."""
    resident = block_info(r.spec, r.profile.denoiser)[0] - streamed
    for k in range(resident + 1):
        cost = layout_cost(r, BlockLayout(resident + streamed, streamed, k, streamed_dtype))
        if cost.gpu_weights_gib + cost.buffers_gib <= room_gib:
            return [k]
    return [resident]
