"""Physical bounds: weight bytes against VRAM, FLOPs against a card's peak, and card-to-card scaling.

Everything here is arithmetic on rows, model specs and card datasheets (lightdiff.specs.cards);
no torch. Units: GB means GiB (2**30 bytes), as in the benchmark rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightdiff.errors import LightdiffError
from lightdiff.specs.cards import Card, find_card

GIB = 2**30
# Storage bytes per parameter. fp8 is the smallest format that keeps 8-bit weights; 4-bit
# (NF4, int4, GGUF Q4) is smaller still, and a claim has to say so for us to assume it.
BYTES_PER_PARAM = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "4-bit": 0.5}
DENOISERS = ("transformer", "unet")


def card_of(name: str | None) -> Card | None:
    if not name:
        return None
    try:
        return find_card(name)
    except LightdiffError:
        return None


def row_card(row: dict) -> Card | None:
    return card_of((row.get("env") or {}).get("gpu"))


@dataclass(frozen=True)
class WeightFloor:
    """The smallest VRAM the denoiser's weights can occupy while it runs without offloading."""

    model: str
    component: str
    params_M: float
    dtype: str

    @property
    def gb(self) -> float:
        return self.params_M * 1e6 * BYTES_PER_PARAM[self.dtype] / GIB

    def arithmetic(self) -> str:
        b = BYTES_PER_PARAM[self.dtype]
        return (f"{self.model} {self.component}: {self.params_M / 1000:.2f} B params x {b:g} byte ({self.dtype}) "
                f"= {self.params_M * 1e6 * b / 1e9:.2f} GB decimal = {self.gb:.2f} GiB")


def denoiser_floor(model_id: str, dtype: str = "fp8") -> WeightFloor | None:
    """Weight floor of the model's denoiser (transformer or UNet) from its spec; None if unknown."""
    from lightdiff import specs

    try:
        spec = specs.get(model_id)
    except LightdiffError:
        return None
    for name in DENOISERS:
        if name in spec.components and spec.params_M(name):
            return WeightFloor(model_id, name, spec.params_M(name), dtype)
    return None


def flop_floor_s(flops: float, card: Card, precision: str = "bf16") -> float | None:
    """Seconds the card needs at its dense datasheet peak: nothing real can run faster."""
    tflops = card.fp8_tflops if precision == "fp8" else card.bf16_tflops
    return flops / (tflops * 1e12) if tflops else None


def peak_ratio_text(measured: Card, target: Card) -> str:
    return (f"{measured.name} bf16 {measured.bf16_tflops:g} vs {target.name} {target.bf16_tflops:g} TFLOP/s "
            f"= {measured.bf16_tflops / target.bf16_tflops:.2f}x")


def scaled_range(times: list[tuple[float, Card]], target: Card, floor: float | None) -> tuple[float, float, str]:
    """The range of seconds a case measured on other cards could take on ``target``.

    A compute-bound run scales with the ratio of bf16 peaks; a launch- or memory-bound run (low
    share of peak) scales less. So the low end takes the measured time on a card at least as fast
    (never below the FLOP floor) and the high end the time scaled by the full peak ratio.
    Returns (low, high, the arithmetic in words).
    """
    lows, highs, parts = [], [], []
    for t, card in times:
        r = card.bf16_tflops / target.bf16_tflops
        lows.append(t * min(1.0, r))
        highs.append(t * max(1.0, r))
        parts.append(f"{t:.3g} s on {card.name} x {r:.2f} ({peak_ratio_text(card, target)}) = {t * r:.3g} s")
    low, high = min(lows), max(highs)
    if floor is not None and floor > low:
        low = floor
    text = ("; ".join(parts) + f". Estimated range on {target.name}: {low:.3g}-{high:.3g} s "
            "(low end: the measured time on a faster card, never below the FLOP floor; high end: scaled "
            "by the peak ratio, which assumes the same share of peak on both cards)")
    return low, high, text


class FlopTable:
    """FLOPs per image by (model, width, height), from rows that counted them.

    Rows with guidance <= 1 (no CFG, half the denoiser forwards) are left out, since every
    article case uses CFG. FLOPs scale with steps: the denoiser runs once (twice with CFG) per
    step; the VAE decode runs once, a few percent, which the step scaling ignores.
    """

    def __init__(self, rows: list[dict]):
        self.entries: dict[tuple[str, int, int], tuple[float, int, str]] = {}
        for r in rows:
            flops, steps = r.get("flops_per_image"), r.get("steps")
            g = r.get("guidance")
            if not flops or not steps or not r.get("width") or (g is not None and g <= 1):
                continue
            key = (r["model"], int(r["width"]), int(r["height"]))
            self.entries.setdefault(key, (float(flops), int(steps), r["_source"]))

    def lookup(self, model: str, width: int, height: int, steps: int | None) -> tuple[float, str] | None:
        """(FLOPs per image at ``steps``, where the number came from), or None if not counted."""
        hit = self.entries.get((model, width, height))
        if not hit:
            return None
        flops, row_steps, source = hit
        if steps and steps != row_steps:
            scaled = flops * steps / row_steps
            return scaled, (f"{flops / 1e12:.4g} TFLOP at {row_steps} steps ({source}) x {steps}/{row_steps} steps "
                            f"= {scaled / 1e12:.4g} TFLOP")
        return flops, f"{flops / 1e12:.4g} TFLOP per image ({source})"
