"""One settings table: every setting has a name, an environment variable, a default and a doc line.

The CLI, the server and the docs read this table; a test checks that each setting is documented
in the README.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: str
    doc: str

    def get(self) -> str:
        return os.environ.get(self.env, self.default)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("home", "LIGHTDIFF_HOME", str(Path.home() / ".lightdiff"),
                "Data directory: job store, caches of synthetic weights and compiled kernels."),
        Setting("output_dir", "LIGHTDIFF_OUTPUT_DIR", "outputs",
                "Where `lightdiff generate` writes images when -o is not given."),
        Setting("models_file", "LIGHTDIFF_MODELS_FILE", "",
                "A TOML or YAML file of user model entries, read in addition to ~/.lightdiff/models.toml."),
        Setting("default_model", "LIGHTDIFF_DEFAULT_MODEL", "demo",
                "Model used when --model is not given."),
        Setting("device", "LIGHTDIFF_DEVICE", "auto",
                "Device for generation: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."),
        Setting("allow_unsafe_pickle", "LIGHTDIFF_ALLOW_UNSAFE_PICKLE", "0",
                "Set to 1 to allow loading pickle checkpoints (.ckpt, .pt, .bin), which can run code."),
        Setting("pin_in_place", "LIGHTDIFF_PIN_IN_PLACE", "1",
                "Set to 0 to let diffusers pin streamed weights tensor by tensor (torch rounds each up to a power "
                "of two: up to 2x the host RAM, and 14 s more to load qwen-image-2512 under 24 GB) instead of one "
                "exact-size buffer (runtime/pinned.py)."),
        Setting("qwen_attention", "LIGHTDIFF_QWEN_ATTENTION", "1",
                "Set to 0 to keep diffusers' attention processor in Qwen-Image's compiled blocks instead of "
                "lightdiff's (rotary embeddings without complex numbers, so Inductor compiles them, and each "
                "stream's q/k/v projections as one matmul: 4.32-4.36 -> 4.19-4.29 s per image at 1024 in fp8 on "
                "three H100s; runtime/qwen_attention.py)."),
        Setting("fp8_scaling", "LIGHTDIFF_FP8_SCALING", "rowwise",
                "The fp8-compute plan's scales: rowwise (one per input row and weight row, measured) or blockwise "
                "(one per 1 x 128 input block and 128 x 128 weight block, through cuBLAS on Hopper; 14% slower than "
                "rowwise for Qwen-Image on an H200, 2026-11-29; runtime/fp8.py)."),
    ]
}


def get(name: str) -> str:
    return SETTINGS[name].get()


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def flag(name: str) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (any case). Anything else is an error that names the
    variable and the value, not a silent "off" (LIGHTDIFF_PIN_IN_PLACE=ture would otherwise double the host RAM)."""
    from lightdiff.errors import LightdiffError

    value = get(name).strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    setting = SETTINGS[name]
    raise LightdiffError(f"{setting.env}={get(name)!r} is not an on/off value.",
                         f"Set {setting.env} to 1 or 0 (or unset it for the default, {setting.default}).",
                         code="bad_setting")


def choice(name: str, options: tuple[str, ...]) -> str:
    """A setting that takes one of ``options``; anything else is an error that names the variable and the value."""
    from lightdiff.errors import LightdiffError

    value = get(name).strip().lower()
    if value in options:
        return value
    setting = SETTINGS[name]
    raise LightdiffError(f"{setting.env}={get(name)!r} is not one of {', '.join(options)}.",
                         f"Set {setting.env} to one of them (or unset it for the default, {setting.default}).",
                         code="bad_setting")


def home() -> Path:
    return Path(get("home")).expanduser()
