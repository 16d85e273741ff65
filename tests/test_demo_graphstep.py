"""train-demo --cuda-graph: the whole training step replayed as one CUDA graph must train exactly as the eager
step does. The capture needs CUDA (those tests run on the device); the options and the eager half run here."""

import argparse
import copy

import pytest
import torch

from lightdiff.demo import model as demo
from lightdiff.demo import train
from lightdiff.demo.graphstep import EagerStep, GraphedStep, make_adamw, set_lr


def _parse(*args):
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.config_from_args(parser.parse_args(["--out", "unused", *args]))


def test_cuda_graph_option_is_checked_before_anything_runs(tmp_path, capsys):
    from lightdiff.cli import main

    assert _parse("--cuda-graph").cuda_graph is True
    assert _parse("--cuda-graph", "--compile").compile is True  # inductor kernels inside the captured step
    assert _parse("--no-cuda-graph").cuda_graph is False
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _parse().graphing(cuda) and not _parse().graphing(cpu)  # the default: on where CUDA is
    assert not _parse("--no-cuda-graph").graphing(cuda)
    assert not _parse("--compile", "--compile-mode", "reduce-overhead").graphing(cuda)  # its own CUDA graphs
    for args, says in ((["--smoke"], "needs a CUDA device"), (["--device", "cpu"], "needs a CUDA device"),
                       (["--compile", "--compile-mode", "reduce-overhead"], "both capture CUDA graphs")):
        out = tmp_path / "out"
        assert main(["train-demo", "--out", str(out), "--cuda-graph", *args]) == 2
        assert says in capsys.readouterr().err and not out.exists()


def test_set_lr_fills_a_tensor_learning_rate_in_place_and_the_step_uses_it():
    w = torch.nn.Parameter(torch.ones(3))
    lr = torch.tensor(0.1)
    opt = torch.optim.SGD([w], lr=lr)
    set_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.5
    w.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((3,), 0.5))
    plain = torch.optim.SGD([w], lr=0.1)
    set_lr(plain, 0.25)
    assert plain.param_groups[0]["lr"] == 0.25


def test_eager_step_clips_steps_and_clears_gradients():
    model = torch.nn.Linear(4, 1)
    params = list(model.parameters())
    opt = make_adamw(params, 1e-2, (0.9, 0.99), 0.0, graphed=False, device=torch.device("cpu"))
    cfg = train.TrainConfig.smoke_preset("unused")
    before = copy.deepcopy(model)
    x = torch.randn(8, 4)
    step = EagerStep(train.Stepper("toy", lambda x: ((model(x) * 1e4).pow(2).mean(),), cfg, torch.device("cpu")),
                     params, opt)
    (loss,) = step(x)
    assert torch.isfinite(loss) and all(p.grad is None for p in params)
    moved = torch.cat([(a - b).flatten() for a, b in zip(model.parameters(), before.parameters())])
    assert 0 < moved.abs().max() <= 1.1e-2  # Adam's step is at most about lr, whatever the (huge) gradient


def test_a_failed_capture_trains_on_eagerly_and_says_so(capsys):
    """Here capture fails for want of CUDA: the step still trains (eagerly), and the run records why."""
    model = torch.nn.Linear(4, 1)
    params = list(model.parameters())
    opt = make_adamw(params, 1e-2, (0.9, 0.99), 0.0, graphed=False, device=torch.device("cpu"))
    step = GraphedStep("toy", lambda x: ((model(x) - 1).pow(2).mean(),), params, opt)
    before = [p.detach().clone() for p in params]
    losses = [step(torch.randn(8, 4))[0] for _ in range(2)]
    assert all(torch.isfinite(v) and not v.requires_grad for v in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, params)) and all(p.grad is None for p in params)
    info = step.info()
    assert info["cuda_graph"] is False and info["cuda_graph_error"] and info["warmup_steps"] == 0
    assert "training on in eager mode" in capsys.readouterr().out


def _step_pair(build, loss_of, lr=1e-2):
    """The same model twice, one stepped eagerly and one through a captured graph."""
    dev = torch.device("cuda")
    eager_model = build().to(dev)
    graph_model = copy.deepcopy(eager_model)
    steps = {}
    for name, model in (("eager", eager_model), ("graph", graph_model)):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_adamw(params, lr, (0.9, 0.99), 0.01, graphed=name == "graph", device=dev)
        fn = loss_of(model)
        steps[name] = (model, opt, GraphedStep(name, fn, params, opt, warmup=1) if name == "graph" else
                       EagerStep(train.Stepper(name, fn, train.TrainConfig(out="unused"), dev), params, opt))
    return steps


@pytest.mark.gpu
def test_a_graphed_step_trains_as_the_eager_step_does_and_follows_the_schedule():
    torch.manual_seed(0)
    steps = _step_pair(lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(),
                                                   torch.nn.Conv2d(8, 3, 3, padding=1)),
                       lambda m: (lambda x, y: ((m(x) - y).pow(2).mean(),)))
    losses = {"eager": [], "graph": []}
    for i in range(6):
        x, y = torch.randn(4, 3, 16, 16, device="cuda"), torch.randn(4, 3, 16, 16, device="cuda")
        for name, (model, opt, step) in steps.items():
            set_lr(opt, 1e-2 * (0.5 ** i))
            if i == 0 and name == "eager":
                step(x, y)  # the graphed step's one warm-up step on its first batch
            losses[name].append(step(x, y)[0])
    graph_step = steps["graph"][2]
    assert graph_step.info()["cuda_graph"] and graph_step.warmup_steps == 1
    # each replay's loss is its own copy, not the static buffer the next replay overwrites
    assert len({float(v) for v in losses["graph"]}) == 6
    torch.testing.assert_close(torch.stack(losses["graph"]), torch.stack(losses["eager"]), rtol=1e-4, atol=1e-5)
    for a, b in zip(steps["graph"][0].parameters(), steps["eager"][0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("phase", ["vae", "unet", "controlnet"])
def test_each_demo_phase_captures_on_the_demo_model_without_falling_back(phase):
    """diffusers' UNet, VAE and ControlNet and transformers' CLIP text model must hold no host sync."""
    from diffusers import DDPMScheduler

    dev = torch.device("cuda")
    torch.manual_seed(0)
    c = {k: v.to(dev) for k, v in demo.build_components().items() if hasattr(v, "to")}
    cfg = train.TrainConfig(out="unused", cuda_graph=True)
    tables = train.noise_tables(DDPMScheduler.from_config(dict(demo.spec().components["scheduler"].config)), dev)
    z, ids = torch.randn(4, 4, 32, 32, device=dev), torch.randint(3, demo.VOCAB_SIZE, (4, demo.MAX_TOKENS), device=dev)
    t, noise = torch.randint(0, 1000, (4,), device=dev), torch.randn(4, 4, 32, 32, device=dev)
    if phase == "vae":
        fn, params, args = train.vae_loss_fn(c["vae"], cfg, dev), list(c["vae"].parameters()), (
            torch.rand(4, 3, 128, 128, device=dev) * 2 - 1,)
    elif phase == "unet":
        fn = train.unet_loss_fn(c["unet"], c["text_encoder"], tables, cfg, dev)
        params, args = list(c["unet"].parameters()) + list(c["text_encoder"].parameters()), (z, ids, t, noise)
    else:
        cn = demo.build_controlnet(c["unet"]).to(dev)
        c["unet"].requires_grad_(False)
        c["text_encoder"].requires_grad_(False)
        fn = train.controlnet_loss_fn(cn, c["unet"], c["text_encoder"], tables, cfg, dev)
        params, args = list(cn.parameters()), (z, ids, t, noise, torch.rand(4, 3, 128, 128, device=dev))
    opt, step = train.training_step(phase, fn, params, 1e-4, 0.0, cfg, dev)
    before = [p.detach().clone() for p in params]
    outs = [step(*args)[0] for _ in range(3)]
    info = step.info()
    assert info["cuda_graph"], info.get("cuda_graph_error")
    assert all(torch.isfinite(v) for v in outs)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    if phase == "vae":  # the posterior sample draws new noise at every replay
        assert float(outs[1]) != float(outs[2])
