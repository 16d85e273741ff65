"""Single-file (A1111 / ComfyUI) checkpoints: export to the LDM layout, load back through diffusers.

The checkpoint is made here from the tiny SD1.5 twin, since there is no hub: a faithful export
must give back every tensor and every pixel after diffusers' own from_single_file.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lightdiff import specs  # noqa: E402
from lightdiff.errors import LightdiffError, UnsafeWeightsFormat, WeightsNotFound  # noqa: E402
from lightdiff.runtime import single_file as sf  # noqa: E402
from lightdiff.runtime.build import assemble, build_twin  # noqa: E402

COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def twin():
    spec = specs.get("tiny-sd15")
    pipe = assemble(spec, build_twin(spec))
    # fresh norms are all ones and zeros: give every tensor its own values so a swapped mapping shows
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in COMPONENTS:
            for p in getattr(pipe, name).parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe


@pytest.fixture(scope="module")
def exported(twin, tmp_path_factory):
    """The twin written as a single file, its config folder and the pipeline loaded back from them."""
    folder = tmp_path_factory.mktemp("single_file")
    path = sf.export_single_file(twin, folder / "tiny-sd15.safetensors")
    config_dir = sf.write_config_dir(twin, folder / "config")
    loaded = sf.load_single_file(path, config_dir)
    return path, config_dir, loaded


def _assert_same_weights(original, loaded, cast=None):
    for name in COMPONENTS:
        want = getattr(original, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert got.keys() == want.keys(), name
        for key, value in want.items():
            value = value if cast is None else value.to(cast)
            assert got[key].dtype == value.dtype, f"{name}.{key}"
            assert torch.equal(got[key], value), f"{name}.{key} changed in the round trip"


def _image(pipe):
    out = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images


def test_round_trip_gives_back_every_tensor(twin, exported):
    _, _, loaded = exported
    _assert_same_weights(twin, loaded)


def test_round_trip_gives_identical_pixels(twin, exported):
    _, _, loaded = exported
    want = _image(twin)
    assert want.std() > 0  # a real image, not a constant that would match anything
    assert (_image(loaded) == want).all()


def test_exported_file_uses_the_ldm_layout(exported):
    path, _, _ = exported
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        vae_q = f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight")
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.proj_out.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in keys)
    # no diffusers block names survive
    assert not [k for k in keys if any(s in k for s in ("down_blocks", "up_blocks", "mid_block", "resnets"))]
    assert vae_q.ndim == 4 and vae_q.shape[2:] == (1, 1)  # LDM VAE attention is a 1x1 conv


def test_real_sd15_layout_matches_diffusers_converter():
    """At real size (on the meta device: shapes, no memory) diffusers' own LDM -> diffusers
    conversion of our keys gives back exactly the diffusers keys and shapes."""
    from diffusers.loaders.single_file_utils import (
        CHECKPOINT_KEY_NAMES, convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint, infer_diffusers_model_type,
    )

    pipe = sf.meta_pipeline(specs.get("sd15"))
    ldm = sf.ldm_state_dict(pipe)
    assert CHECKPOINT_KEY_NAMES["v1"] in ldm  # the key diffusers uses to recognise SD1.x
    assert infer_diffusers_model_type(ldm) == "v1"
    converted = {
        "unet": convert_ldm_unet_checkpoint(dict(ldm), dict(pipe.unet.config)),
        "vae": convert_ldm_vae_checkpoint(dict(ldm), dict(pipe.vae.config)),
        "text_encoder": {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(dict(ldm)).items()},
    }
    for name in COMPONENTS:
        want = getattr(pipe, name).state_dict()
        assert converted[name].keys() == want.keys(), name
        assert all(converted[name][k].shape == want[k].shape for k in want), name


def test_fp16_export_loads_as_fp16(twin, tmp_path):
    path = sf.export_single_file(twin, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = sf.load_single_file(path, sf.write_config_dir(twin, tmp_path / "config"), torch_dtype=torch.float16)
    _assert_same_weights(twin, loaded, cast=torch.float16)


def test_config_dir_from_a_spec_needs_no_weights(twin, exported, tmp_path):
    path, _, _ = exported
    config_dir = sf.write_config_dir(specs.get("tiny-sd15"), tmp_path / "from_spec")
    assert not list(config_dir.rglob("*.safetensors")) and not list(config_dir.rglob("*.bin"))
    _assert_same_weights(twin, sf.load_single_file(path, config_dir))


def test_failed_export_leaves_the_old_file_and_no_temp(twin, tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous checkpoint")

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError):
        sf.export_single_file(twin, target)
    assert target.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def testmeta_pipeline_is_refused_for_export(tmp_path):
    with pytest.raises(LightdiffError, match="meta device"):
        sf.export_single_file(sf.meta_pipeline(specs.get("tiny-sd15")), tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def test_load_errors_name_the_file_and_the_fix(exported, tmp_path):
    _, config_dir, _ = exported
    with pytest.raises(WeightsNotFound, match="missing.safetensors"):
        sf.load_single_file(tmp_path / "missing.safetensors", config_dir)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(UnsafeWeightsFormat, match="model.ckpt"):
        sf.load_single_file(pickle, config_dir)
    from safetensors.torch import save_file

    diffusers_layout = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(diffusers_layout))
    with pytest.raises(LightdiffError, match="not an SD1.x single-file") as err:
        sf.load_single_file(diffusers_layout, config_dir)
    assert "conv_in.weight" in str(err.value)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_qwen_transformer_only_file(tmp_path, prefix):
    """ComfyUI keeps Qwen-Image as a transformer-only file, diffusers key names, often under
    model.diffusion_model. (which diffusers 0.42.1's from_single_file does not strip)."""
    from diffusers import QwenImageTransformer2DModel
    from safetensors.torch import save_file

    torch.manual_seed(0)
    config = dict(specs.get("tiny-qwen-image").components["transformer"].config)
    original = QwenImageTransformer2DModel.from_config(config).eval()
    original.save_config(tmp_path / "config")
    path = tmp_path / "qwen_image.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in original.state_dict().items()}, str(path))

    loaded = sf.load_transformer_file(path, tmp_path / "config")
    want, got = original.state_dict(), loaded.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
