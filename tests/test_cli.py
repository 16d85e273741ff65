"""The CLI as a user runs it: generate writes PNGs; errors are short and name the fix."""

from lightdiff import outputs
from lightdiff.cli import main


def test_generate_writes_images_with_metadata(tmp_path, capsys):
    rc = main(["generate", "a green square", "--model", "tiny-qwen-image", "--seed", "9", "--batch", "2",
               "--steps", "2", "-o", str(tmp_path)])
    assert rc == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    assert sorted(outputs.read_metadata(p)["seed"] for p in pngs) == [9, 10]
    out = capsys.readouterr().out
    assert "noise" in out and str(pngs[0]) in out


def test_unknown_model_is_a_short_error(capsys):
    assert main(["generate", "x", "--model", "sdxl-turbo"]) == 2
    err = capsys.readouterr().err
    assert "unknown_model" in err and "sd15" in err and "Traceback" not in err


def test_invalid_size_fails_before_loading(capsys):
    assert main(["generate", "x", "--size", "100"]) == 2
    err = capsys.readouterr().err
    assert "multiple of 8" in err and "96 or 104" in err
    assert "loading" not in capsys.readouterr().out


def test_models_lists_builtins(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for mid in ("sd15", "qwen-image-2512", "tiny-sd15", "tiny-qwen-image"):
        assert mid in out


def test_env_prints_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "diffusers" in out and "host ram" in out
