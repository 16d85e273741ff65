"""`lightdiff batch --ray`: two actors on a local Ray cluster make 40 images into one fsspec store;
an actor killed midway loses nothing and makes nothing twice."""

import os

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lightdiff[ray]')")

from lightdiff import outputs  # noqa: E402
from lightdiff.pipeline import jobs  # noqa: E402
from lightdiff.pipeline.manifest import Manifest  # noqa: E402
from lightdiff.pipeline.ray_runner import run_ray  # noqa: E402
from lightdiff.pipeline.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_killed_actor_loses_nothing_and_makes_nothing_twice(cluster, tmp_path):
    manifest = Manifest(tmp_path / "manifest.sqlite")
    wanted = jobs.expand({"prompts": ["a red square", "a blue circle"], "seeds": list(range(20)),
                          "model": "tiny-sd15", "steps": 2, "size": 64})
    assert manifest.add(wanted) == 40
    store = Store("memory://ray-test/out")
    killed = []

    def kill_one_midway(made, actors):
        if made == 10 and not killed:
            ray.kill(actors[0], no_restart=False)  # Ray restarts it; its image goes back to the queue
            killed.append(actors[0])

    run_ray(manifest, store, workers=2, max_attempts=3, lease_s=60, on_image=kill_one_midway)

    assert killed
    rows = manifest.rows()
    assert len(rows) == 40 and {r["status"] for r in rows} == {"done"}
    keys = {j.key for j in wanted}
    assert set(store.keys()) == keys  # exactly the 40 asked for: none missing, none extra
    for r in rows:
        assert r["output"].endswith(f"/images/{r['key']}.png")
        with store.fs.open(r["output"], "rb") as f:
            meta = outputs.read_metadata(f)
        assert meta["batch_key"] == r["key"]
    # Every image was claimed at most once more than the one attempt that made it: the one the
    # killed actor held (if it held one) is the only retry.
    assert sum(r["attempts"] for r in rows) <= 41
