"""lightdiff: run, serve, benchmark and compare text-to-image models under a VRAM budget.

Importing this package is free: it does not import torch or touch CUDA (a test holds us to it).
"""

__version__ = "0.1.0"

from lightdiff.errors import LightdiffError  # noqa: E402  (torch-free)

__all__ = ["LightdiffError", "__version__"]
