"""The precompiled SD1.5 loop (runtime/precompiled.py): compiled once, loaded by a later process without tracing,
with the live weights and the plain pipeline's pixels."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys, diffusers, numpy as np, torch
from lightdiff.runtime import fastpath, loader
from lightdiff.workflows.base import generators

lm = loader.load("tiny-sd15", device="cpu")
pipe = lm.pipe
if sys.argv[1] == "changed-weights":  # the artifact must read the weights it is given, not the ones it saw
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(1.05)
pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
ref = pipe(prompt="a red circle", negative_prompt="blurry", width=64, height=64, num_inference_steps=4,
           guidance_scale=7.0, generator=generators(3, 1)).images[0]
pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
loop = fastpath.SD15GraphLoop(pipe, compiled=True, precompiled=True)
out = loop("a red circle", "blurry", 64, 64, 4, 7.0, generators(3, 1))[0]
diff = int(np.abs(np.asarray(ref, dtype=int) - np.asarray(out, dtype=int)).max())
print("RESULT " + json.dumps({"notes": loop.precompiled_notes, "max_pixel_diff": diff,
                              "graphs": int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))}))
"""


def run(tmp_path, mode):
    env = {**os.environ, "LIGHTDIFF_HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[7:])


def test_precompiled_loop_is_saved_then_loaded_without_tracing_and_reads_live_weights(tmp_path):
    import torch

    if not hasattr(torch.compiler, "load_compiled_function"):
        pytest.skip(f"torch {torch.__version__} has no AOT compile; the loop falls back to torch.compile")
    first = run(tmp_path, "same-weights")
    assert first["notes"] == {"sd15-euler-cfg-step": "compiled", "sd15-vae-decode": "compiled"}, first
    assert first["max_pixel_diff"] <= 2, first
    saved = sorted(p.name.split("-")[1] for p in (tmp_path / "precompiled").iterdir())
    assert saved == ["euler", "vae"]
    second = run(tmp_path, "changed-weights")  # a new process: loads both, traces nothing
    assert second["notes"] == {"sd15-euler-cfg-step": "loaded", "sd15-vae-decode": "loaded"}, second
    assert second["graphs"] == 0, second
    assert second["max_pixel_diff"] <= 2, second  # against the plain pipeline with the changed weights


@pytest.mark.gpu
def test_precompiled_loop_replays_its_cuda_graph_with_the_eager_pixels(tmp_path, monkeypatch):
    import diffusers
    import numpy as np
    import torch

    from lightdiff.runtime import fastpath, loader, precompiled
    from lightdiff.workflows.base import generators

    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    lm = loader.load("tiny-sd15", device="cuda", dtype=torch.float16)
    pipe = lm.pipe
    refs = []
    for seed in (1, 2):
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
        refs.append(pipe(prompt="x", width=64, height=64, num_inference_steps=4, guidance_scale=7.0,
                         generator=generators(seed, 1)).images[0])
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
    loop = fastpath.SD15GraphLoop(pipe, compiled=True, precompiled=True)
    outs = [loop("x", None, 64, 64, 4, 7.0, generators(seed, 1))[0] for seed in (1, 2)]  # the second replays
    assert loop.precompiled_notes == {"sd15-euler-cfg-step": "compiled", "sd15-vae-decode": "compiled"}
    assert any(isinstance(f, precompiled.GraphedCall) for f in loop._precompiled.values())
    for ref, out in zip(refs, outs):
        assert np.abs(np.asarray(ref, dtype=int) - np.asarray(out, dtype=int)).max() <= 3
    pipe.vae.to(torch.float32)  # the engine's NaN fallback: code traced for half-precision weights must not get these
    out = loop("x", None, 64, 64, 4, 7.0, generators(1, 1))[0]
    assert np.abs(np.asarray(refs[0], dtype=int) - np.asarray(out, dtype=int)).max() <= 3
    assert len([key for key in loop._precompiled if key[0] == fastpath.DECODE_FN]) == 2


def test_a_failed_precompile_falls_back_to_the_compiled_loop_and_says_why(monkeypatch):
    """A torch build without a working AOT compile: the loop notes why and serves with torch.compile's step and a
    compiled decoder (what it runs with when precompiling is off), and does not try that function again."""
    import torch

    from lightdiff.runtime import fastpath, loader, precompiled

    def refuse(*a, **k):
        raise precompiled.PrecompileFailed("this torch cannot")

    monkeypatch.setattr(precompiled, "load_or_compile", refuse)
    pipe = loader.load("tiny-sd15", device="cpu").pipe  # its own copy: the decoder gets compiled
    loop = fastpath.SD15GraphLoop(pipe, compiled=True, precompiled=True)
    assert pipe.vae.decoder._compiled_call_impl is None  # left to the precompiled decode
    args = (pipe.unet, torch.zeros(1, 4, 8, 8))
    assert loop._precompiled_step(args) is None
    assert loop.precompiled_notes["sd15-euler-cfg-step"].startswith("not precompiled: PrecompileFailed")
    assert pipe.vae.decoder._compiled_call_impl is not None
    monkeypatch.setattr(precompiled, "load_or_compile", lambda *a, **k: pytest.fail("tried again"))
    assert loop._precompiled_step(args) is None


def test_a_failed_precompiled_decoder_falls_back_to_the_compiled_decoder(monkeypatch):
    import torch

    from lightdiff.runtime import fastpath, loader, precompiled

    def refuse(*a, **k):
        raise precompiled.PrecompileFailed("this torch cannot")

    monkeypatch.setattr(precompiled, "load_or_compile", refuse)
    pipe = loader.load("tiny-sd15", device="cpu").pipe  # its own copy: the decoder gets compiled
    loop = fastpath.SD15GraphLoop(pipe, compiled=True, precompiled=True)
    decoded = []
    monkeypatch.setattr(pipe.vae, "decode", lambda z, return_dict=False: decoded.append(z) or (z,))
    latents = torch.ones(1, 4, 8, 8)
    out = loop._decode(latents)
    assert loop.precompiled_notes["sd15-vae-decode"].startswith("not precompiled: PrecompileFailed")
    assert pipe.vae.decoder._compiled_call_impl is not None  # the pipeline's decode, its decoder compiled
    assert torch.equal(out, latents / pipe.vae.config.scaling_factor) and len(decoded) == 1


def double_sin(x):
    return (x * 2).sin()


def test_a_corrupt_artifact_is_compiled_anew_and_replaced(tmp_path):
    """A half-copied or foreign file where an artifact should be: no crash, a fresh compile, a loadable file."""
    import torch

    from lightdiff.runtime import precompiled

    if not hasattr(torch.compiler, "load_compiled_function"):
        pytest.skip(f"torch {torch.__version__} has no AOT compile")
    x = torch.randn(8)
    key = precompiled.artifact_key("double-sin", (x,), {})
    (tmp_path / f"{key}.bin").write_bytes(b"not an artifact")
    fn, how = precompiled.load_or_compile(double_sin, (x,), key, tmp_path)
    assert how == "compiled" and torch.allclose(fn(x), double_sin(x))
    fn, how = precompiled.load_or_compile(double_sin, (x,), key, tmp_path)
    assert how == "loaded" and torch.allclose(fn(x), double_sin(x))
    assert precompiled.artifact_key("double-sin", (torch.randn(4),), {}) != key  # another shape, another file


def rows_plus_text(x, text):
    return (x * 2).sum(1, keepdim=True) + text.sum()


def test_each_size_keeps_its_own_artifact_traced_static_but_for_the_sizes_marked_dynamic(tmp_path):
    """Qwen-Image's blocks at 1024, 768, then 512 in one process: each image size has its own artifact (its key), and
    only the text length varies within one. Dynamo would otherwise make the image size of the second and later
    traces dynamic, whose guards then rejected the third size's own inputs on an H100 (2026-11-28)."""
    import torch

    from lightdiff.runtime import precompiled

    if not hasattr(torch.compiler, "load_compiled_function"):
        pytest.skip(f"torch {torch.__version__} has no AOT compile")
    text = torch.randn(5, 8)
    for tokens in (64, 48, 32):
        x = torch.randn(1, tokens, 8)
        fn, how = precompiled.load_or_compile(rows_plus_text, (x, text), f"rows-{tokens}", tmp_path,
                                              dynamic=[((1,), 0)])
        assert how == "compiled" and fn.guard_check(x, text)
        assert fn.guard_check(x, torch.randn(9, 8))  # another text length: the same artifact
        assert not fn.guard_check(torch.randn(1, 80, 8), text)  # another image size: not this one's
        assert torch.allclose(fn(x, torch.ones(9, 8)), rows_plus_text(x, torch.ones(9, 8)))
