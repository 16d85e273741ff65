import pytest

from lightdiff import specs
from lightdiff.errors import InvalidRequest, UnknownModel
from lightdiff.runtime import build


def test_every_real_spec_has_a_tiny_twin():
    """A new model must come with its tiny twin: this names any spec that lacks one."""
    lacking = [s.id for s in specs.all_specs() if not s.is_twin and not s.user_defined
               and (not s.twin or s.twin not in specs.known_ids())]
    assert not lacking, f"specs without a tiny twin: {lacking}"


def test_twins_share_classes_with_their_model():
    for s in specs.all_specs():
        if s.twin:
            twin = specs.get(s.twin)
            assert twin.family == s.family and twin.pipelines == s.pipelines
            assert {n: c.cls for n, c in twin.components.items()} == {n: c.cls for n, c in s.components.items()}


@pytest.mark.parametrize("model_id", ["sd15", "qwen-image", "qwen-image-2512", "tiny-sd15", "tiny-qwen-image"])
def test_real_size_configs_build_on_meta_with_stated_counts(model_id):
    spec = specs.get(model_id)
    built = build.build_on_meta(spec)
    for name, module in built.items():
        assert all(p.is_meta for p in module.parameters()), f"{name} allocated real memory"
        assert build.count_params_M(module) == pytest.approx(spec.params_M(name), rel=5e-4), name


def test_published_parameter_counts():
    # The figures the issue and the baselines quote (millions).
    assert specs.get("sd15").params_M("unet") == pytest.approx(859.5, abs=0.1)
    assert specs.get("sd15").params_M("vae") == pytest.approx(83.7, abs=0.1)
    assert specs.get("sd15").params_M("text_encoder") == pytest.approx(123.1, abs=0.1)
    assert specs.get("qwen-image-2512").params_M("transformer") == pytest.approx(20430, abs=1)
    assert specs.get("qwen-image-2512").params_M("vae") == pytest.approx(126.9, abs=0.1)
    assert specs.get("qwen-image-2512").params_M("text_encoder") == pytest.approx(8300, rel=0.01)


def test_unknown_model_lists_known_ids():
    with pytest.raises(UnknownModel) as e:
        specs.get("sd-15")
    assert "sd15" in e.value.message and "qwen-image-2512" in e.value.message
    assert "Did you mean 'sd15'" in e.value.hint


def test_user_models_file_toml_and_yaml(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text('[[model]]\nid = "dreamshaper-8"\nfamily = "sd15"\nsource = "./dreamshaper_8.safetensors"\nsteps = 30\n')
    yaml = tmp_path / "more.yaml"
    yaml.write_text("models:\n  - id: my-qwen\n    family: qwen-image\n    source: someone/my-qwen\n")
    try:
        added = specs.reload_user_models(toml)
        assert [s.id for s in added] == ["dreamshaper-8"]
        s = specs.get("dreamshaper-8")
        assert s.source.endswith("dreamshaper_8.safetensors") and s.defaults.steps == 30
        assert s.params_M("unet") == specs.get("sd15").params_M("unet")  # borrows the family's architecture
        specs.reload_user_models(yaml)
        assert specs.get("my-qwen").hub_repo == "someone/my-qwen"
        assert "dreamshaper-8" not in specs.known_ids()  # reload replaces the user's entries
    finally:
        specs.reload_user_models()


def test_user_entry_errors_name_the_problem(tmp_path):
    bad = tmp_path / "models.toml"
    bad.write_text('[[model]]\nid = "x"\nfamily = "sdxl"\nsource = "a/b"\n')
    with pytest.raises(InvalidRequest) as e:
        specs.reload_user_models(bad)
    assert "sdxl" in e.value.message and "sd15" in e.value.hint
    bad.write_text('[[model]]\nid = "x"\n')
    with pytest.raises(InvalidRequest) as e:
        specs.reload_user_models(bad)
    assert "family" in e.value.message and "source" in e.value.message
    specs.reload_user_models()


def test_specs_do_not_import_torch():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import lightdiff.specs as s; s.all_specs(); import sys; "
                          "print('torch' in sys.modules, 'diffusers' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
