"""batch on both families' tiny twins: the requested count comes out, even after an out-of-memory error."""

import numpy as np
import pytest
import torch

from lightdiff.errors import InvalidRequest, OutOfMemory
from lightdiff.workflows import batch, txt2img


def _run(loaded, on_image=None, **kw):
    return batch.run(loaded, {"workflow": "batch", "model": loaded.spec.id, "steps": 2, "seed": 100, **kw},
                     on_image=on_image)


@pytest.fixture
def out_of_memory(monkeypatch, tiny_sd15):
    """Make the pipeline raise CUDA's out-of-memory error when ``when(batch, seeds)`` is true."""
    cls = type(tiny_sd15.pipe)
    real_call = cls.__call__
    calls = []

    def inject(when):
        def call(self, *args, **kwargs):
            seeds = [g.initial_seed() for g in kwargs["generator"]]
            calls.append(len(seeds))
            if when(len(seeds), seeds):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return real_call(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__call__", call)
        return calls
    return inject


def test_count_images_in_chunks_each_handed_over_as_it_finishes(twin):
    handed = []
    r = _run(twin, prompt="a red circle", count=5, batch_size=2, on_image=lambda im, m: handed.append(m["index"]))
    assert len(r.images) == 5 and handed == [0, 1, 2, 3, 4]
    assert [m["seed"] for m in r.metadata] == [100, 101, 102, 103, 104]
    assert [m["batch"]["chunk_size"] for m in r.metadata] == [2, 2, 2, 2, 1]
    assert all(m["fallbacks"] == [] for m in r.metadata) and not r.missing


def test_prompts_share_seeds_and_each_image_is_reproducible_alone(tiny_sd15):
    r = _run(tiny_sd15, prompts=["a red circle", "a blue square"], count=2, batch_size=2)
    assert [(m["prompt"], m["seed"]) for m in r.metadata] == [
        ("a red circle", 100), ("a red circle", 101), ("a blue square", 100), ("a blue square", 101)]
    alone = txt2img.run(tiny_sd15, r.metadata[3]["request"])
    assert np.abs(np.asarray(alone.images[0]).astype(int) - np.asarray(r.images[3]).astype(int)).max() <= 2


def test_explicit_seeds(tiny_sd15):
    r = _run(tiny_sd15, prompt="x", seeds=[7, 8, 30], batch_size=4)
    assert [m["seed"] for m in r.metadata] == [7, 8, 30]
    assert [m["batch"]["chunk_size"] for m in r.metadata] == [2, 2, 1]  # 30 does not follow 8


def test_out_of_memory_on_the_first_chunk_halves_it_and_still_gives_the_count(tiny_sd15, out_of_memory):
    calls = out_of_memory(lambda n, seeds: n == 4 and seeds[0] == 100)
    r = _run(tiny_sd15, prompt="x", count=6, batch_size=4)
    assert len(r.images) == 6 and not r.missing
    assert [m["seed"] for m in r.metadata] == [100, 101, 102, 103, 104, 105]
    assert calls == [4, 2, 2, 2]  # the failed 4, then 2 at a time for the rest too
    fallback = "out of memory at batch size 4 (images 0-3); retried at batch size 2"
    assert all(m["fallbacks"] == [fallback] for m in r.metadata) and fallback in r.warnings


def test_an_image_that_never_fits_is_listed_with_the_rest_as_missing(tiny_sd15, out_of_memory):
    out_of_memory(lambda n, seeds: 102 in seeds)
    r = _run(tiny_sd15, prompt="x", count=5, batch_size=2)
    assert [m["seed"] for m in r.metadata] == [100, 101]
    assert [(m["index"], m["seed"]) for m in r.missing] == [(2, 102), (3, 103), (4, 104)]
    assert r.missing[0]["reason"] == "out of memory at batch size 1 on image 2 (seed 102)"
    assert r.missing[1]["reason"].startswith("not attempted: out of memory")
    assert any("3 of 5 images are missing" in w for w in r.warnings)


def test_when_nothing_fits_the_error_lists_every_missing_image(tiny_sd15, out_of_memory):
    out_of_memory(lambda n, seeds: True)
    with pytest.raises(OutOfMemory) as e:
        _run(tiny_sd15, prompt="x", count=3, batch_size=2)
    assert [m["seed"] for m in e.value.details["missing"]] == [100, 101, 102]


@pytest.mark.parametrize("fields,bad", [
    ({"prompt": "x", "prompts": ["y"]}, "prompts"),
    ({"prompt": "x", "count": 2, "seeds": [1, 2]}, "count"),
    ({"prompt": "x", "count": 0}, "count"),
    ({"prompt": "x", "seeds": [-1]}, "seeds.0"),
    ({"prompts": ["a"] * 200, "count": 60}, "count"),
])
def test_bad_batch_requests_name_the_field(tiny_sd15, fields, bad):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, **fields)
    assert e.value.field == bad
