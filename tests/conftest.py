import os

import pytest

# Tests never reach a hub, and never read the developer's own ~/.lightdiff.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from threads, and on a busy 2-core CI machine two torch threads thrash
# (a tiny step took 0.38 s instead of 0.02 s). Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "lightdiff-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("LIGHTDIFF_HOME", str(home))


@pytest.fixture(scope="session")
def tiny_sd15():
    from lightdiff.runtime import loader

    return loader.load("tiny-sd15", device="cpu")


@pytest.fixture(scope="session")
def tiny_qwen():
    from lightdiff.runtime import loader

    return loader.load("tiny-qwen-image", device="cpu")


@pytest.fixture(params=["sd15", "qwen"])
def twin(request, tiny_sd15, tiny_qwen):
    """Each family's tiny twin in turn: a test taking ``twin`` runs once per family."""
    return tiny_sd15 if request.param == "sd15" else tiny_qwen


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
