"""The speed path computes the same images as plain diffusers (where it runs on the CPU)."""

from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch

from lightdiff.runtime import fastpath
from lightdiff.workflows.base import generators


@pytest.mark.parametrize("batch", [1, 2])
def test_sd15_graph_loop_matches_diffusers_euler(tiny_sd15, batch):
    pipe = tiny_sd15.pipe
    original = pipe.scheduler
    try:
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(tiny_sd15.scheduler_config)
        ref = pipe(prompt="a red circle", negative_prompt="blurry", width=64, height=64, num_inference_steps=4,
                   guidance_scale=7.0, num_images_per_prompt=batch, generator=generators(5, batch)).images
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(tiny_sd15.scheduler_config)
        loop = fastpath.SD15GraphLoop(pipe, compiled=False)
        steps = []
        out = loop("a red circle", "blurry", 64, 64, 4, 7.0, generators(5, batch), num_images_per_prompt=batch,
                   callback=lambda p, i, t, kw: steps.append(i))
    finally:
        pipe.scheduler = original
    assert steps == [0, 1, 2, 3]
    for a, b in zip(ref, out):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
def test_images_leave_the_device_as_uint8_with_diffusers_pixels(dtype, channels):
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8)
    images = torch.randn(2, channels, 16, 24, generator=torch.Generator().manual_seed(0)) * 1.5  # beyond [-1, 1] too
    images[0, 0, 0, :6] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255 - 1, 2 * 0.5 / 255 - 1, 2 * 128.5 / 255 - 1])
    images = images.to(dtype)  # the half-way values round half to even, as NumPy's round does
    ours = fastpath.images_to_pil(processor, images)
    theirs = processor.postprocess(images, output_type="pil")
    assert [im.mode for im in ours] == [im.mode for im in theirs] == ["RGB" if channels == 3 else "L"] * 2
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_graph_loop_supports_only_what_it_reproduces(tiny_sd15):
    loop = fastpath.SD15GraphLoop(tiny_sd15.pipe, compiled=False)
    assert loop.supports("sd15", "euler", 7.0)
    assert not loop.supports("sd15", "dpm++2m", 7.0)
    assert not loop.supports("qwen-image", "euler", 4.0)
    assert not loop.supports("sd15", "euler", 1.0)  # no CFG: diffusers runs a single branch


def test_persistent_compile_cache_lives_in_lightdiff_home(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    with torch.compiler.config.patch(job_id=None):  # torch's config is restored afterwards
        assert fastpath.persist_compile_cache() == str(tmp_path / "inductor")
        assert torch.compiler.config.job_id == fastpath.PGO_JOB_ID
    with torch.compiler.config.patch(job_id="users-own"):
        fastpath.persist_compile_cache()
        assert torch.compiler.config.job_id == "users-own"  # a job id the user chose is theirs


BACKGROUND_IMPORT = r"""
import sys, torch
from lightdiff.runtime import fastpath

thread = fastpath.import_compiler_in_background()
thread.join(timeout=300)
assert not thread.is_alive() and thread.daemon  # a daemon: it never holds up the process's exit
missing = [m for m in fastpath.COMPILER_MODULES if m != "triton" and m not in sys.modules]
assert not missing, missing
# CUDA-graph trees keep their state in the importing thread's local storage: the main thread must import them
assert "torch._inductor.cudagraph_trees" not in sys.modules
import torch._inductor.cudagraph_trees
assert torch._C._is_key_in_tls("tree_manager_containers")
print("OK")
"""


def test_the_compile_stack_imports_on_a_background_thread_but_leaves_graph_trees_to_the_main_thread():
    """On an H100 every reduce-overhead compile failed an assertion (graph trees' thread-local state missing) while
    the background import included the graph trees; this runs in a fresh interpreter, where nothing is imported yet."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", BACKGROUND_IMPORT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


TWO_LENGTHS = r"""
import sys, torch
from lightdiff.runtime import fastpath

fastpath.persist_compile_cache()
f = torch.compile(lambda text, w: torch.softmax(text @ w, dim=-1) * 2.0, fullgraph=True)
w = torch.randn(8, 8)
for length in (5, 9, 13):  # like a prompt and a negative prompt of different token counts
    f(torch.randn(1, length, 8), w)
print("GRAPHS", int(torch._dynamo.utils.counters["stats"]["unique_graphs"]))
"""


def test_a_second_process_traces_a_function_whose_input_length_varies_once(tmp_path):
    """Warm start: the first process learns the text length varies (static trace, then a dynamic one); the
    second traces once, dynamic from the start, from the profile kept in the lightdiff home."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR", "TORCH_COMPILE_JOB"))}
    env["LIGHTDIFF_HOME"] = str(tmp_path)

    def graphs():
        proc = subprocess.run([sys.executable, "-c", TWO_LENGTHS], capture_output=True, text=True, timeout=600,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return int(proc.stdout.split("GRAPHS")[1])

    assert graphs() == 2
    assert graphs() == 1


def test_graph_loop_marks_steps_for_every_mode_that_replays_cuda_graphs():
    """A replayed graph overwrites its output: the loop must mark each step and copy the latents for every
    compile mode that records CUDA graphs, max-autotune included, and for no other."""
    pipe = SimpleNamespace(unet=None, scheduler=SimpleNamespace(config={}))
    modes = {m: fastpath.SD15GraphLoop(pipe, compiled=True, mode=m, prepare=False).graphed
             for m in ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default")}
    assert modes == {"reduce-overhead": True, "max-autotune": True, "max-autotune-no-cudagraphs": False,
                     "default": False}
    assert not fastpath.SD15GraphLoop(pipe, compiled=False, mode="reduce-overhead").graphed


def test_compiled_graph_loop_also_compiles_the_decoder_in_channels_last():
    """What the engine's loop sets up beside the step (the benchmark measures the same): NHWC convolutions in the
    UNet and VAE decoder, the decoder compiled; the eager loop (the CPU path) leaves the pipeline as loaded."""
    from lightdiff.runtime import loader

    pipe = loader.load("tiny-sd15", device="cpu").pipe  # its own copy: a compiled decoder would slow other tests
    fastpath.SD15GraphLoop(pipe, compiled=False)
    assert pipe.vae.decoder._compiled_call_impl is None
    assert pipe.unet.conv_in.weight.is_contiguous()
    fastpath.SD15GraphLoop(pipe, compiled=True)
    assert pipe.vae.decoder._compiled_call_impl is not None
    for conv in (pipe.unet.conv_in, pipe.vae.decoder.conv_in):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", fastpath.CUDA_GRAPH_MODES)
def test_compiled_graph_loop_matches_eager_on_gpu(mode):
    from lightdiff.runtime import loader

    lm = loader.load("tiny-sd15", device="cuda", dtype=torch.float16)
    pipe = lm.pipe
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
    ref = pipe(prompt="x", width=64, height=64, num_inference_steps=4, guidance_scale=7.0,
               generator=generators(1, 1)).images[0]
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
    out = fastpath.SD15GraphLoop(pipe, compiled=True, mode=mode)("x", None, 64, 64, 4, 7.0, generators(1, 1))[0]
    assert np.abs(np.asarray(ref, dtype=int) - np.asarray(out, dtype=int)).max() <= 3


def test_engine_fast_path_gives_the_plain_pipelines_pixels_and_says_so():
    from lightdiff.workflows.engine import Engine

    request = {"model": "tiny-sd15", "prompt": "a red circle", "seed": 4, "steps": 3, "batch_size": 2}
    plain = Engine(device="cpu", fast="off").run(request)
    fast = Engine(device="cpu", fast="eager").run(request)
    assert [m.get("fast_path") for m in fast.metadata] == ["graph-loop (eager)"] * 2
    assert all("fast_path" not in m for m in plain.metadata)
    for a, b in zip(plain.images, fast.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = Engine(device="cpu", fast="eager").run({**request, "scheduler": "dpm++2m"})
    assert all("fast_path" not in m for m in other.metadata)  # the loop only reproduces Euler


def test_engine_rejects_unknown_fast_mode():
    from lightdiff.errors import InvalidRequest
    from lightdiff.workflows.engine import Engine

    with pytest.raises(InvalidRequest) as e:
        Engine(device="cpu", fast="turbo")
    assert e.value.field == "fast"


def test_cuda_graph_blocks_mark_a_new_graph_step_before_every_denoiser_call(monkeypatch):
    """With CUDA graphs each transformer call (true CFG makes two per step) starts a new CUDA-graph step, so
    the first call's outputs are not overwritten by the second's replays; the hook is added once."""
    from lightdiff.runtime import loader

    den = loader.load("tiny-qwen-image", device="cpu").pipe.transformer
    compiled, marks = [], []
    monkeypatch.setattr(den, "compile_repeated_blocks", lambda **kw: compiled.append(kw))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    assert fastpath.compile_blocks(den) == "repeated blocks"
    assert compiled == [{"fullgraph": True}] and getattr(den, "_lightdiff_step_mark", None) is None
    assert fastpath.compile_blocks(den, cuda_graphs=True) == "repeated blocks, CUDA graphs"
    fastpath.compile_blocks(den, cuda_graphs=True)  # a recompile: still one hook
    assert compiled[1:] == [{"fullgraph": True, "mode": "reduce-overhead"}] * 2
    from lightdiff.workflows import txt2img

    loaded = loader.load("tiny-qwen-image", device="cpu")
    loaded.pipe.transformer = den
    txt2img.run(loaded, {"model": "tiny-qwen-image", "prompt": "a cube", "seed": 1, "steps": 3, "width": 64,
                         "height": 64, "guidance": 4.0})
    assert len(marks) == 2 * 3  # true CFG: two calls per step, one mark each
    assert fastpath.compile_blocks(den) == "repeated blocks" and den._lightdiff_step_mark is None
    txt2img.run(loaded, {"model": "tiny-qwen-image", "prompt": "a cube", "seed": 1, "steps": 3, "width": 64,
                         "height": 64, "guidance": 4.0})
    assert len(marks) == 2 * 3  # compiled again without CUDA graphs: no more marks


def test_a_step_cached_request_runs_compiled_blocks_eager_and_gives_them_back():
    """diffusers' cache hooks cannot be traced by a fullgraph compile (TaylorSeer's are compiler.disable'd), so
    within a step cache the compiled blocks run eager; afterwards their compiled code runs again."""
    from lightdiff.runtime import loader
    from lightdiff.workflows import txt2img

    loaded = loader.load("tiny-qwen-image", device="cpu")
    blocks = list(loaded.pipe.transformer.transformer_blocks)
    calls = []

    def compiled_stand_in(block):  # what nn.Module.compile installs, recording that it ran
        return lambda *a, **kw: (calls.append(1), block._call_impl(*a, **kw))[1]

    for block in blocks:
        block._compiled_call_impl = compiled_stand_in(block)
    request = {"model": "tiny-qwen-image", "prompt": "a cube", "seed": 1, "steps": 3, "width": 64, "height": 64,
               "guidance": 4.0}
    with fastpath.step_cache(loaded.pipe, "taylorseer"):
        assert all(b._compiled_call_impl is None for b in blocks)
        txt2img.run(loaded, request)
    assert calls == [] and all(b._compiled_call_impl is not None for b in blocks)
    txt2img.run(loaded, request)
    assert len(calls) == len(blocks) * 2 * 3  # compiled again: every block, two true-CFG calls, three steps


@pytest.mark.gpu
def test_engine_step_cache_runs_between_graphed_requests_and_leaves_them_as_they_were():
    from lightdiff.workflows.engine import Engine

    request = {"model": "tiny-qwen-image", "prompt": "a red cube", "seed": 3, "steps": 6, "width": 64, "height": 64,
               "guidance": 4.0}
    engine = Engine(device="cuda", plan="resident", fast="auto")  # blocks replay as CUDA graphs by default
    assert engine.run(request).metadata[0]["plan_info"]["compiled"] == "repeated blocks precompiled, CUDA graphs"
    cached = engine.run({**request, "step_cache": "taylorseer"})  # blocks eager within the cache
    want = Engine(device="cuda", plan="resident", fast="off").run({**request, "step_cache": "taylorseer"})
    diff = np.abs(np.asarray(want.images[0], dtype=int) - np.asarray(cached.images[0], dtype=int)).max()
    assert diff <= 3
    after = engine.run(request)  # the compiled, graphed blocks again: the plain image
    plain = Engine(device="cuda", plan="resident", fast="off").run(request)
    assert np.abs(np.asarray(after.images[0], dtype=int) - np.asarray(plain.images[0], dtype=int)).max() <= 3


@pytest.mark.gpu
@pytest.mark.parametrize("precompiled", [True, False])
def test_engine_cuda_graph_blocks_draw_the_plain_image_at_two_sizes(precompiled):
    """Both CUDA-graph paths: the precompiled block stack (the default) and torch.compile's graph trees over the
    regionally compiled blocks (--no-precompiled, and the fallback), which the compile stack's background import once
    broke on the GPU (graph trees' thread-local state)."""
    from lightdiff.workflows.engine import Engine

    request = {"model": "tiny-qwen-image", "prompt": "a red cube", "seed": 3, "steps": 4, "width": 64, "height": 64,
               "guidance": 4.0, "negative_prompt": "blurry, low quality, extra fingers, watermark"}
    want = Engine(device="cuda", plan="resident", fast="off")
    graphed = Engine(device="cuda", plan="resident", fast="auto", precompiled=precompiled)  # CUDA graphs: the default
    for size in (64, 96):
        r = {**request, "width": size, "height": size}
        a, b = want.run(r), graphed.run(r)
        assert b.metadata[0]["plan_info"]["compiled"] == ("repeated blocks precompiled, CUDA graphs" if precompiled
                                                          else "repeated blocks, CUDA graphs")
        diff = np.abs(np.asarray(a.images[0], dtype=int) - np.asarray(b.images[0], dtype=int)).max()
        assert diff <= 3


def test_the_engine_prices_a_request_as_the_loop_it_will_run():
    """The planner times SD1.5's resident plan as the compiled loop only where txt2img would run that loop."""
    from lightdiff import specs
    from lightdiff.workflows.base import resolve
    from lightdiff.workflows.engine import Engine

    engine = Engine(device="cpu", fast="auto")

    def runs(**request):
        _, req = engine.parse({"prompt": "x", **request})
        return engine._runs_compiled_loop(req, resolve(req, specs.get(req.model)))

    assert not runs(model="sd15")  # on the CPU the loop is not compiled
    engine.device = "cuda"  # only the decision is asked: no GPU needed
    assert runs(model="sd15") and runs(model="sd15", batch_size=4)
    assert not runs(model="sd15", scheduler="dpm++2m")  # the loop reproduces Euler only
    assert not runs(model="sd15", guidance=1.0)
    assert not runs(model="qwen-image-2512")
    engine.fast = "off"
    assert not runs(model="sd15")
