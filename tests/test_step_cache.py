"""Step caching (diffusers' cache hooks, issue #9): off unless asked, it skips denoiser work, every image that
used it says it changes the output, the next request computes every step again, and a cache lightdiff does not
offer, or one asked of a UNet model, is refused before anything loads."""

import numpy as np
import pytest
import torch

from lightdiff.errors import InvalidRequest
from lightdiff.workflows.engine import Engine

REQUEST = {"model": "tiny-qwen-image", "prompt": "a red cube", "seed": 3, "steps": 10, "width": 64, "height": 64}


def test_taylorseer_skips_denoiser_work_labels_the_image_and_is_removed_afterwards():
    engine = Engine(device="cpu", fast="off")
    plain = engine.run(REQUEST)
    den = engine.pool.loaded()[0].pipe.transformer
    calls = []
    for m in den.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda *_: calls.append(1))

    def linear_calls(request):
        calls.clear()
        result = engine.run(request)
        return len(calls), result

    full, again = linear_calls(REQUEST)
    cached, result = linear_calls({**REQUEST, "step_cache": "taylorseer"})
    assert cached < 0.9 * full  # steps after the first few are predicted, not computed
    meta = result.metadata[0]
    assert meta["step_cache"] == {"kind": "taylorseer", "changes_output": True}
    assert meta["request"]["step_cache"] == "taylorseer"
    assert any("changes the image" in w and "synthetic" in w for w in result.warnings)
    after, last = linear_calls(REQUEST)  # the hooks are gone: every step computed, the plain image again
    assert after == full and "step_cache" not in last.metadata[0] and not last.warnings
    assert np.array_equal(np.asarray(last.images[0]), np.asarray(plain.images[0]))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(plain.images[0]))


def test_first_block_cache_runs_and_is_labelled():
    result = Engine(device="cpu", fast="off").run({**REQUEST, "steps": 4, "step_cache": "fbc"})
    assert result.images and result.metadata[0]["step_cache"]["kind"] == "fbc"


@pytest.mark.parametrize("model,kind,says", [
    ("tiny-qwen-image", "magcache", "fbc, taylorseer"),  # needs ratios calibrated on real weights: not offered
    ("tiny-sd15", "fbc", "UNet"),
])
def test_a_step_cache_lightdiff_cannot_run_is_refused_before_loading(model, kind, says):
    engine = Engine(device="cpu", fast="off")
    with pytest.raises(InvalidRequest) as e:
        engine.run({**REQUEST, "model": model, "step_cache": kind})
    assert e.value.field == "step_cache" and repr(kind) in e.value.message
    assert says in e.value.message + e.value.hint
    assert not engine.pool.loaded()  # nothing was loaded for a request that cannot run
