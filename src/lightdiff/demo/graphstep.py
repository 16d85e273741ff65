"""One training step (loss forward and backward, gradient clipping, AdamW) as one CUDA graph.

The demo model is small (UNet 6.7M parameters), so an eager step at batch 256 on an H100 spends its time
launching kernels from Python, not running them (10 steps/s at batch 256, 5.2 at 1024: docs/demo). Replaying a
captured graph launches the whole step at once. This is PyTorch's whole-network capture recipe
(https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture), not a torch.compile mode, so it
costs seconds to capture instead of minutes to compile:

- warm up a few real steps on a side stream (cuDNN picks its algorithms, AdamW creates its state);
- capture with the gradients set to None, so backward allocates them in the graph's memory pool and every
  replay writes them afresh (no zeroing between steps);
- AdamW with ``capturable=True`` and a tensor learning rate, so the schedule changes without a new capture
  (``set_lr`` fills the tensor).

The batch is copied into the graph's static inputs before each replay; outputs are copied out, since the
next replay overwrites them. RNG inside the loss (the VAE's posterior sample) is graph-safe: PyTorch advances
the default generator's offset on each replay. The first call takes ``warmup`` real steps on its batch before
capturing; they are counted in ``warmup_steps``. If capturing fails, training goes on eagerly with the same
optimizer, and ``info()`` says why.
"""

from __future__ import annotations

import time
import traceback


def make_adamw(params, lr: float, betas: tuple[float, float], weight_decay: float, graphed: bool, device):
    """AdamW for an eager step (foreach, float lr) or a graphed one (capturable, lr a device tensor)."""
    import torch

    if not graphed:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=torch.tensor(lr, device=device), betas=betas, weight_decay=weight_decay,
                             capturable=True, foreach=True)


def set_lr(opt, lr: float) -> None:
    """Set every group's learning rate; a tensor lr (a graphed optimizer) is filled in place, no host sync."""
    import torch

    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


class EagerStep:
    """loss_fn via ``stepper`` (eager or torch.compile), backward, clip to norm 1, AdamW, zero the gradients."""

    def __init__(self, stepper, params, opt, max_norm: float = 1.0):
        self.stepper, self.params, self.opt, self.max_norm = stepper, params, opt, max_norm

    def __call__(self, *args):
        import torch

        out = self.stepper(self.params, *args)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out

    def info(self) -> dict:
        return self.stepper.info()


class GraphedStep:
    """The same step as ``EagerStep``, captured once and replayed (CUDA only; see the module docstring)."""

    def __init__(self, name: str, loss_fn, params, opt, max_norm: float = 1.0, warmup: int = 3, eager_fn=None):
        """``loss_fn`` may be a torch.compile'd function (compiled during the warm-up); ``eager_fn`` is the plain
        one, used if capturing fails (default: ``loss_fn``)."""
        self.name, self.loss_fn, self.params, self.opt = name, loss_fn, params, opt
        self.eager_fn = eager_fn or loss_fn
        self.max_norm, self.warmup = max_norm, warmup
        self.graph = None
        self.static_in: list = []
        self.static_out: tuple = ()
        self.failed = False  # capture failed: the rest of the phase runs eagerly
        self.first_step_s: float | None = None
        self.warmup_steps = 0
        self.error: str | None = None

    def _step(self, *args, fn=None):
        import torch

        out = (fn or self.loss_fn)(*args)
        out[0].backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.opt.step()
        return out

    def _capture(self, args) -> None:
        import torch

        self.static_in = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.opt.zero_grad(set_to_none=True)
                self._step(*self.static_in)
                self.warmup_steps += 1
        torch.cuda.current_stream().wait_stream(side)
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self._step(*self.static_in)
        self.graph = graph

    def _eager_step(self, *args):
        out = self._step(*args, fn=self.eager_fn)
        self.opt.zero_grad(set_to_none=True)
        return tuple(o.detach() for o in out)

    def __call__(self, *args):
        if self.failed:
            return self._eager_step(*args)
        if self.graph is None:
            t0 = time.perf_counter()
            try:
                self._capture(args)
            except Exception as e:  # noqa: BLE001 - a failed capture: train on eagerly, say so
                traceback.print_exc()
                print(f"{self.name}: CUDA graph capture failed ({e!r}); training on in eager mode", flush=True)
                self.error = repr(e)
                self.opt.zero_grad(set_to_none=True)
                self.failed = True
                out = self._eager_step(*args)
                self.first_step_s = time.perf_counter() - t0
                return out
            out = self._replay(args)
            self.first_step_s = time.perf_counter() - t0
            print(f"{self.name}: captured the training step as a CUDA graph ({self.warmup_steps} warm-up steps) "
                  f"in {self.first_step_s:.1f}s", flush=True)
            return out
        return self._replay(args)

    def _replay(self, args):
        for static, a in zip(self.static_in, args):
            static.copy_(a)
        self.graph.replay()
        return tuple(o.detach().clone() for o in self.static_out)

    def info(self) -> dict:
        out = {"cuda_graph": self.graph is not None and not self.failed,
               "first_step_seconds": round(self.first_step_s or 0.0, 1), "warmup_steps": self.warmup_steps}
        if self.error:
            out["cuda_graph_error"] = self.error
        return out
