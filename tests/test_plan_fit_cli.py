"""`lightdiff fit`: a table of every plan for a model, size and card, without torch."""

import subprocess
import sys

import pytest

from lightdiff.cli import main
from lightdiff.runtime import plan as plans


def test_fit_prints_every_plan_and_the_pick_without_importing_torch():
    code = ("import sys\nfrom lightdiff.cli import main\n"
            "rc = main(['fit', '--model', 'qwen-image-2512', '--size', '1024', '--gpu', 'RTX 4090D', '--ram', '64'])\n"
            "print('RC', rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in plans.names():
        assert name in out
    assert "RTX 4090D" in out and "lightdiff would pick:" in out
    assert out.strip().endswith("RC 0 False")


@pytest.mark.parametrize("card", ["RTX 4090D", "RTX 3090", "RTX 4060 Ti 16GB", "H100"])
def test_sd15_at_512_runs_resident_on_known_cards(card, capsys):
    assert main(["fit", "--model", "sd15", "--size", "512", "--gpu", card]) == 0
    assert "lightdiff would pick: resident" in capsys.readouterr().out


def test_qwen_in_24_gb_is_not_resident(capsys):
    assert main(["fit", "--model", "qwen-image-2512", "--size", "1024", "--vram", "24"]) == 0
    out = capsys.readouterr().out
    pick = out.split("lightdiff would pick: ")[1].split(" ")[0]
    resident = next(line for line in out.splitlines() if line.startswith("resident "))
    assert pick != "resident" and " no " in resident and "needs 4" in resident  # 40 GB of weights alone


def test_a_request_that_fits_nowhere_says_what_it_needs(capsys):
    rc = main(["fit", "--model", "qwen-image-2512", "--size", "1024", "--vram", "4", "--ram", "16"])
    out = capsys.readouterr().out
    assert rc == 1 and "Nothing fits." in out and "host RAM" in out and "fix:" in out
    assert "yes" not in out.split("plan")[1]  # no row says it fits


def test_fit_needs_a_budget(capsys):
    assert main(["fit", "--model", "sd15"]) == 2
    assert "--vram" in capsys.readouterr().err


def test_fit_follows_the_engine_on_fp8_compute(capsys):
    """Default (--fast auto, as generate): fp8-compute on an fp8 card, said to be lossy; --fast off: not."""
    assert main(["fit", "--model", "qwen-image-2512", "--size", "1024", "--gpu", "RTX 4090D"]) == 0
    out = capsys.readouterr().out
    assert "lightdiff would pick: fp8-compute" in out and "Lossy" in out and "--fast off" in out
    assert main(["fit", "--model", "qwen-image-2512", "--size", "1024", "--gpu", "RTX 4090D", "--fast", "off"]) == 0
    pick = capsys.readouterr().out.split("lightdiff would pick: ")[1].split(" ")[0]
    assert pick not in ("fp8-compute", "resident")


def test_fit_times_sd15_as_the_engine_runs_it(capsys):
    """--fast auto: SD1.5's resident time is its compiled loop's (and says so, with diffusers' loop beside it)."""
    assert main(["fit", "--model", "sd15", "--gpu", "H200", "--json"]) == 0
    fast = __import__("json").loads(capsys.readouterr().out)["plans"]["resident"]
    assert main(["fit", "--model", "sd15", "--gpu", "H200", "--fast", "off", "--json"]) == 0
    plain = __import__("json").loads(capsys.readouterr().out)["plans"]["resident"]
    assert fast["sec_per_image"] < plain["sec_per_image"] / 3
    assert "compiled loop" in fast["reason"] and f"about {plain['sec_per_image']:.2f} s" in fast["reason"]
    assert "compiled loop" not in plain["reason"]
