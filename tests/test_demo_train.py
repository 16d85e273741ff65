"""Training the demo model: the --smoke run end to end on the CPU, and the pieces it relies on."""

import argparse
import json

import numpy as np
import pytest
import torch

from lightdiff.demo import model as demo
from lightdiff.demo import train
from lightdiff.demo.scenes import SceneDataset, render


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-smoke")
    summary = train.run(train.TrainConfig.smoke_preset(str(out)), argv=["--out", str(out), "--smoke"])
    return out, summary


def test_smoke_run_writes_every_artifact(smoke_run):
    out, summary = smoke_run
    for name in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                 "tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "controlnet/config.json",
                 "losses.jsonl", "losses.png", "eval.json", "summary.json", "samples_heldout.png",
                 "samples_controlnet.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"vae", "unet", "controlnet"}
    assert all(np.isfinite(r["loss"]) for r in rows)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["phases"]["unet"]["steps"] == 3 and on_disk["seed"] == 0 and "--smoke" in on_disk["command"]
    assert set(on_disk["eval"]["primary"]) == {"guidance", "colour_shape", "position"}
    # fp16 safetensors within the caps (the smoke run saves the real architecture)
    assert set(summary["files"]) == {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                     "vae/diffusion_pytorch_model.safetensors",
                                     "controlnet/diffusion_pytorch_model.safetensors"}
    assert all(size < demo.FILE_CAP_BYTES for size in summary["files"].values())
    assert summary["total_bytes"] < demo.TOTAL_CAP_BYTES


def test_eval_scores_held_out_captions(smoke_run):
    out, _ = smoke_run
    report = json.loads((out / "eval.json").read_text())
    assert report["n"] == 4 and report["steps"] == 2
    # the checker reads the true renders of the same captions perfectly: the eval measures the model
    assert report["reference_renders"]["colour_shape"] == 100.0
    for criterion in ("colour_shape", "position"):
        assert 0.0 <= report["heldout"]["5.0"]["percent"][criterion] <= 100.0
    assert report["controlnet"]["n"] == 2


def test_saved_folder_loads_as_the_demo_model_and_generates(smoke_run):
    from lightdiff.runtime import loader
    from lightdiff.workflows import txt2img

    out, _ = smoke_run
    loaded = loader.load("demo", str(out), device="cpu")
    assert loaded.source.kind == "local" and loaded.pipe.vae_scale_factor == 4
    result = txt2img.run(loaded, {"model": "demo", "prompt": "a red circle on the left on a blue background",
                                  "width": 64, "height": 64, "steps": 2, "seed": 1})
    assert result.images[0].size == (64, 64)
    assert np.asarray(result.images[0]).std() > 0


def test_controlnet_folder_runs_with_the_pipeline(smoke_run):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    out, _ = smoke_run
    controlnet = ControlNetModel.from_pretrained(str(out / "controlnet"), torch_dtype=torch.float32)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(str(out), controlnet=controlnet,
                                                             torch_dtype=torch.float32, safety_checker=None)
    sample = SceneDataset(seed=3, length=1, size=64)[0]
    edges = Image.fromarray(demo.canny_edges(sample.image)).convert("RGB")
    image = pipe(sample.caption, image=edges, num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_tokenizer_is_saved_and_reloads(smoke_run):
    from transformers import AutoTokenizer

    from lightdiff.demo.vocab import build_tokenizer

    out, _ = smoke_run
    reloaded = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    original = build_tokenizer(demo.ECHO_MAX_TOKENS, echo=True)  # the smoke run's default, as the shipped
    for text in ("a large red circle left of a small blue square on a yellow background",
                 "黄色背景上，一个大的红色圆形在一个小的蓝色正方形左边", ""):
        assert reloaded(text, padding="max_length").input_ids == original(text, padding="max_length").input_ids
    assert reloaded.model_max_length == original.model_max_length


def test_mirrored_scene_is_the_flipped_render_with_its_own_caption():
    from lightdiff.demo.checker import check
    from lightdiff.demo.scenes import caption, caption_form, caption_language

    ds = SceneDataset(seed=5, length=60, size=128, places_mix=0.5)
    forms = set()
    checked = 0
    for i in range(len(ds)):
        scene, text = ds.scene_and_caption(i)
        if any(o.texture != "plain" for o in scene.objects):
            continue  # stripe and dot patterns are not mirror-symmetric
        mirrored = train.mirror_scene(scene)
        flipped = np.asarray(render(scene))[:, ::-1]
        assert np.abs(np.asarray(render(mirrored)).astype(int) - flipped).mean() < 1.0
        mirrored_caption = caption(mirrored, caption_language(text), caption_form(text))
        result = check(np.ascontiguousarray(flipped), mirrored_caption)
        assert result.position_ok and result.colour_shape_ok, (text, mirrored_caption)
        assert caption_form(mirrored_caption) == caption_form(text)
        forms.add(caption_form(text))
        checked += 1
    assert checked > 30 and forms == {"relation", "places"}
    # left and right words change, nothing else
    one = next(s for s in (ds.scene_and_caption(i)[0] for i in range(60)) if s.relation == "left of")
    assert train.mirror_scene(one).relation == "right of"


def test_render_chunk_mirrors_each_caption_in_its_own_form_and_language():
    from lightdiff.demo.scenes import caption_form, caption_language, parse_caption

    start, images, edges, captions, mirrored = train.render_chunk((6, "train", 4, 40, 32, 0.5, "free", 0))
    assert start == 4 and images.shape == (36, 32, 32, 3) and edges.shape == (36, 32, 32) and len(mirrored) == 36
    ds = SceneDataset(seed=6, length=40, size=32, places_mix=0.5)
    for k, (text, flipped) in enumerate(zip(captions, mirrored)):
        scene, expected = ds.scene_and_caption(4 + k)
        assert text == expected
        assert parse_caption(flipped) == train.mirror_scene(scene).spec()
        assert (caption_form(flipped), caption_language(flipped)) == (caption_form(text), caption_language(text))
    assert {caption_form(t) for t in captions} == {"relation", "places"}


def test_normalised_vae_latents_have_unit_variance_and_decode_the_same():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(demo.VAE_CONFIG).eval()
    images = torch.from_numpy(np.stack([np.asarray(SceneDataset(seed=1, length=8, size=32)[i].image)
                                        for i in range(8)]))
    x = train.to_model_input(images)
    with torch.no_grad():
        before_latents = vae.encode(x).latent_dist.mean
        before = vae.decode(before_latents).sample
        train.normalise_latents(vae, images, torch.device("cpu"))
        after_latents = vae.encode(x).latent_dist.mean
        after = vae.decode(after_latents).sample
    assert torch.allclose(after, before, atol=1e-4)
    assert after_latents.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert torch.allclose(after_latents.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)


def test_learning_rate_warms_up_then_decays_over_the_time_box():
    base = 1e-3
    assert train.lr_at(base, 0, 0.0, warmup=10) == pytest.approx(1e-4)
    assert train.lr_at(base, 10, 0.0, warmup=10) == pytest.approx(base)
    assert train.lr_at(base, 1000, 1.0, warmup=10) == pytest.approx(0.1 * base)
    assert train.lr_at(base, 1000, 0.5, warmup=10) < train.lr_at(base, 1000, 0.25, warmup=10)


def test_missing_cuda_is_a_clear_error_before_any_work(tmp_path):
    from lightdiff.errors import InvalidRequest

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidRequest) as e:
        train.run(train.TrainConfig(out=str(tmp_path / "run")))
    assert "--device cpu" in e.value.hint


def _tiny_inputs():
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    components = demo.build_components()
    scheduler = DDPMScheduler.from_config(dict(demo.spec().components["scheduler"].config))
    return components, train.noise_tables(scheduler, torch.device("cpu"))


def test_compiled_loss_functions_trace_as_one_graph_and_train():
    """What runs compiled on CUDA traces on the CPU too: one graph each (aot_eager: tracing, no codegen)."""
    components, tables = _tiny_inputs()
    cpu = torch.device("cpu")
    cfg = train.TrainConfig.smoke_preset("unused", compile=True, compile_backend="aot_eager")
    unet, text, vae = components["unet"], components["text_encoder"], components["vae"]
    cases = {
        "vae": (train.vae_loss_fn(vae, cfg, cpu), (torch.rand(2, 3, 32, 32) * 2 - 1,), list(vae.parameters())),
        "unet": (train.unet_loss_fn(unet, text, tables, cfg, cpu),
                 (torch.randn(2, 4, 16, 16), torch.randint(3, 80, (2, 32)), torch.tensor([10, 900]),
                  torch.randn(2, 4, 16, 16)), list(unet.parameters()) + list(text.parameters())),
    }
    for name, (fn, args, params) in cases.items():
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_count == 1 and explained.graph_break_count == 0, (name, explained.break_reasons)
        stepper = train.Stepper(name, fn, cfg, cpu)
        loss = stepper(params, *args)[0]
        assert stepper.info()["compiled"] and torch.isfinite(loss)
        assert all(p.grad is not None for p in params if p.requires_grad), name
        for p in params:
            p.grad = None


def test_a_failing_compile_falls_back_to_eager_and_says_so(capsys):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    components, tables = _tiny_inputs()
    cpu = torch.device("cpu")
    cfg = train.TrainConfig.smoke_preset("unused", compile=True, compile_backend=broken_backend)
    vae = components["vae"]
    stepper = train.Stepper("vae", train.vae_loss_fn(vae, cfg, cpu), cfg, cpu)
    loss, _ = stepper(list(vae.parameters()), torch.rand(1, 3, 32, 32) * 2 - 1)
    assert torch.isfinite(loss) and vae.decoder.conv_out.weight.grad is not None
    info = stepper.info()
    assert info["compiled"] is False and "no compiler here" in info["compile_error"]
    assert "training on in eager mode" in capsys.readouterr().out


def test_cuda_graph_mode_marks_each_step_and_copies_out_what_outlives_it(monkeypatch, tmp_path, capsys):
    """reduce-overhead replays reuse output memory: the logged loss must be a copy, each step a new one."""
    from lightdiff.cli import main

    seen, marks, produced = {}, [], []

    def fake_compile(fn, **kw):  # CUDA graphs need a GPU; check the wiring around them here
        seen.update(kw)

        def run(*args):
            out = fn(*args)
            produced.append(out[0])
            return out
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    components, _ = _tiny_inputs()
    cpu = torch.device("cpu")
    cfg = train.TrainConfig.smoke_preset("unused", compile=True, compile_mode="reduce-overhead")
    vae = components["vae"]
    stepper = train.Stepper("vae", train.vae_loss_fn(vae, cfg, cpu), cfg, cpu)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    losses = [stepper(list(vae.parameters()), x)[0] for _ in range(2)]
    assert seen["mode"] == "reduce-overhead" and len(marks) == 2 and stepper.info()["mode"] == "reduce-overhead"
    assert all(a is not b and torch.equal(a, b.detach()) for a, b in zip(losses, produced))
    assert not losses[0].requires_grad and vae.decoder.conv_out.weight.grad is not None

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = ["--out", str(tmp_path), "--compile", "--compile-mode", "reduce-overhead"]
    assert train.config_from_args(parser.parse_args(args)).compile_mode == "reduce-overhead"
    assert main(["train-demo", "--out", str(tmp_path / "out"), "--smoke", "--compile-mode", "reduce-overhead"]) == 2
    assert "needs --compile" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_decoder_only_vae_loss_leaves_the_encoder_untouched():
    components, _ = _tiny_inputs()
    cpu = torch.device("cpu")
    cfg = train.TrainConfig.smoke_preset("unused")
    vae = components["vae"]
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    loss, _ = train.vae_loss_fn(vae, cfg, cpu, decoder_only=True)(torch.rand(2, 3, 32, 32) * 2 - 1)
    loss.backward()
    assert all(p.grad is None for p in vae.encoder.parameters())
    assert all(p.grad is not None for p in vae.decoder.parameters())


def test_latent_store_encodes_scenes_as_they_arrive_and_samples_only_those():
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from lightdiff.demo.vocab import build_tokenizer

    cfg = train.TrainConfig.smoke_preset("unused", encode_batch=3, bf16=False)
    ds = SceneDataset(seed=2, length=6, size=32)
    scenes = [ds.scene_and_caption(i) for i in range(6)]
    renderer = SimpleNamespace(n=6, ready=0, images=np.stack([np.asarray(ds[i].image) for i in range(6)]),
                               edges=np.zeros((6, 32, 32), np.uint8), captions=[c for _, c in scenes],
                               mirrored=[f"mirror {i}" for i in range(6)])
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(demo.VAE_CONFIG).eval()
    cpu = torch.device("cpu")
    store = train.LatentStore(cfg, vae, train.DeviceImages(renderer, cpu), build_tokenizer(demo.MAX_TOKENS), cpu)
    renderer.ready = 4
    assert store.update() == 4 and store.latents.shape == (12, 4, 8, 8)
    rows = set(store.sample(2000).tolist())
    assert rows == {0, 1, 2, 3, 6, 7, 8, 9}  # scenes 0-3 and their mirrors at capacity + i
    with torch.no_grad():
        x = train.to_model_input(torch.from_numpy(renderer.images[1:2]))
        mirror = vae.encode(x.flip(3)).latent_dist.mean
    assert torch.allclose(store.latents[6 + 1].float(), mirror[0], atol=2e-3)
    renderer.ready = 6
    assert store.update() == 6 and store.tokens[5].tolist() != store.tokens[11].tolist()
    assert set(store.sample(2000).tolist()) == set(range(12))


def test_ema_ramps_up_and_copies_the_average_back():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = train.EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    ema.step()  # decay (1 + 1) / (10 + 1)
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1 - 2 / 11))
    for _ in range(100):
        ema.step()
    ema.copy_to()
    assert torch.allclose(p.detach(), torch.ones(3), atol=1e-4)


def test_controlnet_only_continued_run_keeps_the_txt2img_weights(smoke_run, tmp_path):
    """--init DIR --split 0,0,1: the VAE, UNet and text encoder are saved bit-identical, the ControlNet trains."""
    from safetensors.torch import load_file

    first, _ = smoke_run
    out = tmp_path / "cn-only"
    cfg = train.TrainConfig.smoke_preset(str(out), init=str(first), split=(0.0, 0.0, 1.0))
    summary = train.run(cfg, argv=["--out", str(out), "--smoke", "--init", str(first), "--split", "0,0,1"])
    assert summary["phases"]["vae"]["steps"] == 0 and summary["phases"]["unet"]["steps"] == 0
    assert summary["phases"]["controlnet"]["steps"] > 0
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):
        before, after = load_file(first / name), load_file(out / name)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), name
    cn_before = load_file(first / "controlnet/diffusion_pytorch_model.safetensors")
    cn_after = load_file(out / "controlnet/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(cn_before[k], cn_after[k]) for k in cn_before)


def test_continuing_the_shipped_weights_keeps_their_text_encoder_and_tokenizer(tmp_path):
    """A continued run tokenizes as its folder's text encoder reads: its positions and its echo, whatever the
    code's defaults (--init of the 32-position weights failed once MAX_TOKENS became 40)."""
    from transformers import AutoTokenizer

    from lightdiff.demo.vocab import echoes
    from lightdiff.runtime.loader import demo_weights_dir

    shipped = demo_weights_dir()
    positions = json.loads((shipped / "text_encoder/config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "continued"
    cfg = train.TrainConfig.smoke_preset(str(out), init=str(shipped), split=(0.0, 1.0, 0.0), echo=False)
    summary = train.run(cfg, argv=["--out", str(out), "--smoke"])
    assert summary["phases"]["unet"]["steps"] > 0 and not summary["errors"]
    assert json.loads((out / "tokenizer/tokenizer_config.json").read_text())["model_max_length"] == positions
    assert json.loads((out / "text_encoder/config.json").read_text())["max_position_embeddings"] == positions
    assert echoes(AutoTokenizer.from_pretrained(out / "tokenizer")) == echoes(
        AutoTokenizer.from_pretrained(shipped / "tokenizer"))


def test_an_echo_run_saves_an_echo_tokenizer_and_a_continued_run_keeps_it(tmp_path):
    from transformers import AutoTokenizer

    from lightdiff.demo.vocab import echoes

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert train.config_from_args(parser.parse_args(["--out", "x"])).echo
    assert not train.config_from_args(parser.parse_args(["--out", "x", "--no-echo"])).echo
    first, second = tmp_path / "echo", tmp_path / "continued"
    summary = train.run(train.TrainConfig.smoke_preset(str(first)), argv=["--out", str(first)])  # echo: default
    assert summary["echo"] and not summary["errors"] and "eval" in summary  # the eval generated through it
    assert echoes(AutoTokenizer.from_pretrained(first / "tokenizer"))
    assert json.loads((first / "text_encoder/config.json").read_text())["max_position_embeddings"] == \
        demo.ECHO_MAX_TOKENS
    cfg = train.TrainConfig.smoke_preset(str(second), init=str(first), split=(0.0, 1.0, 0.0), echo=False)  # the folder's wins
    assert train.run(cfg, argv=["--out", str(second)])["echo"]
    assert echoes(AutoTokenizer.from_pretrained(second / "tokenizer"))


@pytest.mark.parametrize("split, init, wrong", [("0,0", False, "three non-negative"), ("a,b,c", False, "three"),
                                                 ("0.3,-1,0.1", False, "non-negative"), ("0,0,0", True, "positive sum"),
                                                 ("0,1,0", False, "no VAE or no UNet")])
def test_bad_split_is_refused_before_any_work(split, init, wrong, tmp_path, capsys):
    from lightdiff.cli import main

    args = ["train-demo", "--out", str(tmp_path / "out"), "--smoke", "--split", split]
    if init:
        from lightdiff.runtime.loader import demo_weights_dir

        args += ["--init", str(demo_weights_dir())]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert repr(split) in err and wrong in err and not (tmp_path / "out").exists()


def test_places_mix_reaches_the_render_workers_and_a_bad_one_is_refused(tmp_path, capsys):
    from lightdiff.cli import main
    from lightdiff.demo.scenes import caption_form

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    cfg = train.config_from_args(parser.parse_args(["--out", str(tmp_path), "--places-mix", "0.25"]))
    assert cfg.places_mix == 0.25
    assert train.TrainConfig(out=str(tmp_path)).places_mix == 0.0  # the default trains "A left of B" alone
    captions = train.render_chunk((6, "train", 0, 30, 32, 0.0, "free", 0))[3]
    assert {caption_form(t) for t in captions} == {"relation"}
    assert main(["train-demo", "--out", str(tmp_path / "out"), "--smoke", "--places-mix", "1.5"]) == 2
    assert "--places-mix 1.5" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_init_that_is_not_a_trained_folder_is_refused(tmp_path, capsys):
    from lightdiff.cli import main

    assert main(["train-demo", "--out", str(tmp_path / "out"), "--smoke", "--init", str(tmp_path)]) == 2
    assert "--init" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_batch_sizes_of_each_phase_come_from_the_command_line():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    cfg = train.config_from_args(parser.parse_args(["--out", "x", "--unet-batch", "128", "--cn-batch", "32"]))
    assert (cfg.unet_batch, cfg.cn_batch) == (128, 32)
    default = train.config_from_args(parser.parse_args(["--out", "x"]))
    assert (default.unet_batch, default.cn_batch) == (512, 256)


def test_pair_layout_reaches_the_render_workers():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    cfg = train.config_from_args(parser.parse_args(["--out", "x", "--pair-layout", "free"]))
    assert cfg.pair_layout == "free" and train.TrainConfig(out="x").pair_layout == "halves"  # the shipped recipe
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--pair-layout", "centred"])
    captions = train.render_chunk((6, "train", 0, 12, 32, 0.0, "halves", 0))[3]
    halves = SceneDataset(seed=6, length=12, size=32, split="train", pair_layout="halves")
    assert captions == [halves.scene_and_caption(i)[1] for i in range(12)]
    assert captions != [SceneDataset(seed=6, length=12, size=32).scene_and_caption(i)[1] for i in range(12)]
