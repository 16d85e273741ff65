"""Streamed weights pinned in one exact-size buffer (runtime/pinned.py)."""

import gc

import pytest
import torch

from lightdiff.runtime import pinned


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.LayerNorm(13),
                                        torch.nn.Linear(13, 5, bias=False))
        self.register_buffer("scale", torch.tensor([0.5, 2.0]))
        self.tied = torch.nn.Linear(13, 5, bias=False)
        self.tied.weight = self.body[2].weight  # a tied weight is stored once

    def forward(self, x):
        return self.body(x) * self.scale[1]


def _model():
    torch.manual_seed(0)
    return _Model().to(torch.bfloat16)


def test_consolidate_keeps_values_and_makes_every_tensor_a_view_of_one_aligned_buffer():
    model = _model()
    x = torch.randn(3, 7, dtype=torch.bfloat16)
    before = model(x)
    values = {name: t.detach().clone() for name, t in model.state_dict().items()}
    buf = pinned.consolidate(model)
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(buf.holds(t) and t.data_ptr() % pinned.PAGE == 0 for t in tensors)  # each on a page of its own
    # exactly the tensors' bytes, each rounded up to a page, the tied weight once
    assert buf.nbytes == sum(-(-t.numel() * t.element_size() // pinned.PAGE) * pinned.PAGE for t in tensors)
    assert model.tied.weight is model.body[2].weight
    assert all(torch.equal(values[name], t) for name, t in model.state_dict().items())
    assert torch.equal(model(x), before)


def test_consolidate_leaves_device_tensors_and_an_empty_module_alone():
    assert pinned.consolidate(torch.nn.ReLU()) is None
    model = torch.nn.Linear(4, 4).to("meta")
    assert pinned.consolidate(model) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only behaviour")
def test_pin_module_without_cuda_changes_nothing():
    model = _model()
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert pinned.pin_module(model) == {"skipped": "no CUDA"}
    assert [p.data_ptr() for p in model.parameters()] == ptrs


@pytest.mark.gpu
def test_pinned_module_streams_through_group_offloading_without_a_second_copy(monkeypatch):
    from diffusers.hooks import apply_group_offloading

    monkeypatch.setattr(pinned, "CHUNK_BYTES", pinned.PAGE)  # several registrations, as a real model has
    model = _model()
    x = torch.randn(3, 7, dtype=torch.bfloat16)
    expected = model(x)
    info = pinned.pin_module(model)
    assert info["pinned_bytes"] > 0 and all(p.is_pinned() for p in model.parameters())
    buf = model._lightdiff_pinned_buffers[0]
    assert len(buf.chunks) > 1
    apply_group_offloading(model, onload_device="cuda", offload_device="cpu", offload_type="leaf_level",
                           use_stream=True, record_stream=True)
    with torch.no_grad():
        out = model(x.cuda())
    torch.testing.assert_close(out.cpu(), expected)
    assert all(buf.holds(p) for p in model.parameters())  # offloaded again: back in our buffer
    keep = buf.raw[buf.start:buf.start + 16]
    del model, buf
    gc.collect()
    assert not keep.is_pinned()  # the registration went with the module; the memory itself is still valid


def test_registered_ranges_are_runs_of_whole_tensors_on_page_boundaries(monkeypatch):
    # a copy that spans two registrations fails (cudaErrorInvalidValue): every tensor lies inside one chunk
    monkeypatch.setattr(pinned, "CHUNK_BYTES", 3 * pinned.PAGE)
    model = torch.nn.ModuleList(torch.nn.Linear(64, 40 + i, dtype=torch.bfloat16) for i in range(6))
    buf = pinned.consolidate(model)
    assert len(buf.chunks) > 1
    base = buf.raw.data_ptr()
    assert buf.chunks[0][0] == 0  # from the storage base, which is_pinned() asks the driver about
    assert all((base + off + n) % pinned.PAGE == 0 and (i == 0 or (base + off) % pinned.PAGE == 0) and
               (n >= 3 * pinned.PAGE or i == len(buf.chunks) - 1) for i, (off, n) in enumerate(buf.chunks))
    for t in model.parameters():
        start, end = t.data_ptr() - base, t.data_ptr() - base + t.numel() * t.element_size()
        assert sum(off <= start and end <= off + n for off, n in buf.chunks) == 1
    spans = sorted(buf.chunks)
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))  # contiguous, no page shared
