"""House rule 1: importing lightdiff and `lightdiff --help` must not import torch or touch CUDA."""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_lightdiff_does_not_import_torch():
    mods = _modules_after("import lightdiff, lightdiff.specs, lightdiff.errors, lightdiff.settings")
    assert "torch" not in mods and "diffusers" not in mods


def test_cli_help_does_not_import_torch():
    mods = _modules_after(
        "import contextlib, io\nfrom lightdiff.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert "torch" not in mods


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "lightdiff", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("generate", "models", "env"):
        assert cmd in out.stdout
