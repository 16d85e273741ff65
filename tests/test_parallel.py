"""`lightdiff generate --context-parallel N`: one image split over N ranks is the image one process makes,
only rank 0 writes it, its metadata says how it was split, and what cannot work is refused before any
process starts. The CPU runs go through the real path (spawned ranks, diffusers' context parallelism over gloo)."""

import json

import numpy as np
import pytest
from PIL import Image

from lightdiff import outputs
from lightdiff.cli import main
from lightdiff.errors import InvalidRequest, LightdiffError
from lightdiff.runtime import parallel

PROMPT = "a red circle left of a blue square"


def one_process_image(tmp_path, **request):
    from lightdiff.workflows.engine import Engine

    engine = Engine(device=request.pop("device", "cpu"))
    result = engine.run({"model": "tiny-qwen-image", "prompt": PROMPT, "seed": 5, **request})
    return np.asarray(result.images[0], dtype=np.int16)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_two_cpu_ranks_make_the_one_process_image_and_only_rank_0_writes(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", PROMPT, "--model", "tiny-qwen-image", "--seed", "5", "--context-parallel", "2",
                 "--device", "cpu", "-o", str(out)]) == 0
    (png,) = out.glob("*.png")  # one image, written once
    assert not list(out.glob(".*"))  # no temporary file left behind
    assert np.abs(pixels(png) - one_process_image(tmp_path)).max() <= 1
    meta = outputs.read_metadata(png)
    cp = meta["context_parallel"]
    assert (cp["degree"], cp["mode"], cp["backend"], cp["devices"]) == (2, "ulysses", "gloo", ["cpu", "cpu"])
    # the twin has 3 heads: Ulysses over 2 ranks needs diffusers' uneven ("anything") split
    assert cp["split"] == "uneven" and cp["tokens"]["image"] == 64
    assert meta["seed"] == 5
    assert "split over cpu+cpu" in capsys.readouterr().out


@pytest.mark.slow
def test_an_even_split_over_three_ranks_is_the_same_image(tmp_path):
    # 3 heads, 144 image tokens, a 9-token prompt and a 6-token negative prompt: all divide by 3
    request = {"model": "tiny-qwen-image", "prompt": "a red circle", "width": 96, "height": 96, "seed": 7}
    out = parallel.generate(request, 3, "ulysses", device="cpu", out_dir=str(tmp_path), runs=2)
    assert out["context_parallel"]["split"] == "even"
    assert out["context_parallel"]["tokens"] == {"image": 144, "prompt": 9, "negative_prompt": 6}
    assert [t["run"] for t in out["timings"]] == [1, 2] and len(out["ranks"]) == 3
    (path,) = out["paths"]
    reference = one_process_image(tmp_path, prompt="a red circle", width=96, height=96, seed=7)
    assert np.abs(pixels(path) - reference).max() <= 1


@pytest.mark.slow
def test_an_error_inside_a_rank_comes_back_whole(tmp_path):
    request = {"model": "tiny-qwen-image", "prompt": PROMPT, "weights": str(tmp_path / "no-such-folder"), "seed": 1}
    with pytest.raises(LightdiffError) as e:
        parallel.generate(request, 2, device="cpu", out_dir=str(tmp_path / "out"))
    assert e.value.code == "weights_not_found" and "no-such-folder" in e.value.message and e.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, says", [
    (["--model", "tiny-sd15", "--context-parallel", "2", "--device", "cpu"], "lightdiff batch jobs.jsonl -o OUT --devices"),
    (["--model", "tiny-qwen-image", "--context-parallel", "1"], "Leave --context-parallel out"),
    (["--model", "tiny-qwen-image", "--cp-mode", "ring"], "--cp-mode ring is given without --context-parallel"),
    (["--model", "tiny-qwen-image", "--context-parallel", "2", "--cp-mode", "ring", "--device", "cpu"],
     "Ring attention cannot run on the CPU"),
    (["--model", "tiny-qwen-image", "--context-parallel", "2", "--device", "cpu", "--plan", "fp8-storage"],
     "every rank keeps the whole model resident"),
    (["--model", "tiny-qwen-image", "--context-parallel", "2", "--device", "cpu", "--vram-budget", "12"],
     "--vram-budget 12.0 cannot be combined"),
    (["--model", "tiny-qwen-image", "--context-parallel", "2", "--device", "cuda:1"], "CUDA_VISIBLE_DEVICES"),
    # the twin's 3 heads cannot be split 4 ways even with padding; 2 and 3 can, and ring splits tokens only
    (["--model", "tiny-qwen-image", "--context-parallel", "4", "--device", "cpu"],
     "Use --context-parallel 2 or 3, or --cp-mode ring"),
    (["--model", "tiny-qwen-image", "--context-parallel", "2", "--size", "72"], "multiple of 16"),
])
def test_what_cannot_work_is_refused_before_any_rank_starts(capsys, monkeypatch, args, says):
    monkeypatch.setattr(parallel, "generate", _no_launch(parallel.generate))
    assert main(["generate", PROMPT, *args]) != 0
    err = capsys.readouterr().err
    assert says in err, err


def _no_launch(generate):
    """parallel.generate with the process start replaced by a failure: a refusal must come first."""
    import torch.multiprocessing as tmp

    def wrapped(*a, **kw):
        original = tmp.start_processes
        tmp.start_processes = lambda *x, **y: pytest.fail("ranks were started for a request that should be refused")
        try:
            return generate(*a, **kw)
        finally:
            tmp.start_processes = original

    return wrapped


def test_gpus_are_counted_and_no_cuda_is_refused_with_the_cpu_path_named(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidRequest) as e:
        parallel.check("qwen-image-2512", 2)
    assert "none is visible" in e.value.message and "--device cpu" in e.value.hint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InvalidRequest) as e:
        parallel.check("qwen-image-2512", 2)
    assert "needs 2 GPUs; 1 is visible" in e.value.message
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    launch = parallel.check("qwen-image-2512", 2, "ring")
    assert (launch.backend, launch.devices()) == ("nccl", ["cuda:0", "cuda:1"])


def test_the_split_is_even_only_where_diffusers_plain_split_works():
    # qwen-image-2512: 24 heads; at 1024 4096 image tokens
    assert parallel.split_kind(2, "ulysses", 24, {"image": 4096, "prompt": 16, "negative_prompt": 6}) == "even"
    assert parallel.split_kind(2, "ulysses", 24, {"image": 4096, "prompt": 13, "negative_prompt": 6}) == "uneven"
    assert parallel.split_kind(2, "ulysses", 3, {"image": 64, "prompt": 14}) == "uneven"  # heads
    assert parallel.split_kind(2, "ring", 3, {"image": 64, "prompt": 14}) == "even"  # ring leaves heads whole
    with pytest.raises(InvalidRequest) as e:
        parallel.split_kind(8, "ulysses", 24, {"image": 4096, "prompt": 6})
    assert "prompt is 6 token(s)" in e.value.message
    # Ulysses' padding of the heads must stay under one rank's share (diffusers asserts it)
    assert parallel.ulysses_degrees(24) == [2, 3, 4, 5, 6, 8, 12]
    assert parallel.ulysses_degrees(3) == [2, 3]


@pytest.mark.gpu
@pytest.mark.parametrize("mode, weights", [("ulysses", "twin"), ("ring", "synthetic")])
def test_two_gpus_make_the_one_gpu_image(tmp_path, mode, weights):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    request = {"model": "tiny-qwen-image", "prompt": PROMPT, "seed": 5, "weights": weights}
    out = parallel.generate(request, 2, mode, out_dir=str(tmp_path))
    assert out["context_parallel"]["backend"] == "nccl" and out["context_parallel"]["mode"] == mode
    reference = one_process_image(tmp_path, device="cuda:0", weights=weights)
    diff = np.abs(pixels(out["paths"][0]) - reference)
    # float32 (twin) matches to a level; bf16 (synthetic) differs by rounding in the split attention
    assert diff.max() <= (2 if weights == "twin" else 16) and diff.mean() < 1.0
    assert json.loads(Image.open(out["paths"][0]).info["lightdiff"])["context_parallel"]["degree"] == 2


def test_ring_on_a_float32_transformer_is_refused_before_anything_is_split(tiny_qwen):
    from lightdiff.workflows.base import parse, resolve
    from lightdiff.workflows.txt2img import Request

    r = resolve(parse(Request, {"model": "tiny-qwen-image", "prompt": PROMPT}))
    with pytest.raises(InvalidRequest) as e:
        parallel.split(tiny_qwen, parallel.Launch(2, "ring", "cuda"), r)
    assert "needs bf16 or fp16" in e.value.message and "float32" in e.value.message
    assert tiny_qwen.pipe.transformer._parallel_config is None  # left as it was
