"""Known GPUs as data: VRAM, dense tensor-core peaks and memory bandwidth (vendor datasheets).

Peaks are dense (no sparsity) with FP32 accumulation, which is what PyTorch's bf16/fp16 matmuls
use; GeForce cards run that at half their FP16-accumulate rate. fp8 is None where the card has
no fp8 tensor cores. Used by the planner (`lightdiff fit --gpu`) and by the report's FLOP floors.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightdiff.errors import InvalidRequest


@dataclass(frozen=True)
class Card:
    name: str
    vram_gb: float
    bf16_tflops: float
    fp8_tflops: float | None
    mem_gbps: float
    arch: str
    aliases: tuple[str, ...] = ()
    pcie_gbps: float = 25.0  # host-to-device copy rate seen with pinned memory (PCIe 4.0 x16)


CARDS: list[Card] = [
    Card("RTX 4090D", 24, 147.0, 294.0, 1008, "ada", ("4090d", "rtx4090d")),
    Card("RTX 4090", 24, 165.2, 330.3, 1008, "ada", ("4090", "rtx4090")),
    Card("RTX 5090", 32, 209.5, 419.0, 1792, "blackwell", ("5090", "rtx5090"), pcie_gbps=50.0),
    Card("RTX 4080", 16, 97.5, 194.9, 717, "ada", ("4080",)),
    Card("RTX 4070", 12, 58.4, 116.8, 504, "ada", ("4070",)),
    Card("RTX 4060 Ti 16GB", 16, 44.1, 88.2, 288, "ada", ("4060 ti", "4060ti", "4060 ti 16gb"), pcie_gbps=12.0),
    Card("RTX 3090", 24, 71.0, None, 936, "ampere", ("3090", "rtx3090")),
    Card("RTX 3060 12GB", 12, 25.6, None, 360, "ampere", ("3060", "rtx3060")),
    Card("RTX A6000", 48, 154.8, None, 768, "ampere", ("a6000",)),
    Card("L4", 24, 121.0, 242.0, 300, "ada", ("nvidia l4",), pcie_gbps=12.0),
    Card("A100 80GB", 80, 312.0, None, 2039, "ampere", ("a100",)),
    Card("H100 80GB", 80, 989.0, 1979.0, 3350, "hopper", ("h100", "h100 sxm", "nvidia h100 80gb hbm3"),
         pcie_gbps=50.0),
    Card("H200", 141, 989.0, 1979.0, 4800, "hopper", ("nvidia h200",), pcie_gbps=50.0),
]


def _norm(s: str) -> str:
    return " ".join(s.lower().replace("nvidia", "").replace("geforce", "").split())


def find_card(name: str) -> Card:
    """Look a card up by name or alias, case-insensitively ("RTX 4090D", "4090d", "H100")."""
    want = _norm(name)
    for card in CARDS:
        if want == _norm(card.name) or want in (_norm(a) for a in card.aliases):
            return card
    # Device names as torch reports them ("NVIDIA H100 80GB HBM3") contain a known name.
    for card in sorted(CARDS, key=lambda c: -len(c.name)):
        if _norm(card.name) in want or any(_norm(a) in want for a in card.aliases if len(a) > 3):
            return card
    raise InvalidRequest("gpu", f"Unknown GPU {name!r}.",
                         f"Known cards: {', '.join(c.name for c in CARDS)}; or give --vram GB instead.")
