"""`lightdiff batch` on this machine: job files expand to keyed images, a run resumes without
remaking anything, failures are retried up to the limit and reported, and claims are exclusive."""

import json
import sqlite3
import threading

import pytest

from lightdiff import outputs
from lightdiff.cli import main
from lightdiff.errors import InvalidRequest, LightdiffError
from lightdiff.pipeline import jobs
from lightdiff.pipeline.manifest import Manifest
from lightdiff.pipeline.store import Store

TINY = {"model": "tiny-sd15", "steps": 2, "size": 64}


def write_jobs(path, lines):
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def rows(out_dir):
    db = sqlite3.connect(out_dir / "manifest.sqlite")
    db.row_factory = sqlite3.Row
    return {r["key"]: dict(r) for r in db.execute("SELECT * FROM images")}


def test_lines_expand_to_stable_keys_one_per_image(tmp_path):
    a = jobs.expand({"prompts": ["a fox", "a cat"], "seeds": [5, 6, 7], **TINY})
    assert [(j.request["prompt"], j.request["seed"]) for j in a] == [
        (p, s) for p in ("a fox", "a cat") for s in (5, 6, 7)]
    assert all(j.request["batch_size"] == 1 and j.request["width"] == 64 for j in a)
    assert len({j.key for j in a}) == 6
    # Defaults written out or left implicit are the same image; a different seed is not.
    same = jobs.expand({"prompt": "a fox", "seed": 5, "weights": "auto", "workflow": "txt2img", **TINY})
    assert same[0].key == a[0].key
    # Without a seed the seeds come from the request: the same file asks for the same images again.
    first, again = jobs.expand({"prompt": "a fox", "count": 3, **TINY}), jobs.expand({"prompt": "a fox", "count": 3, **TINY})
    assert [j.key for j in first] == [j.key for j in again]
    seeds = [j.request["seed"] for j in first]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    # A CSV row is the same request as the JSON line.
    csv = tmp_path / "jobs.csv"
    csv.write_text("prompt,seeds,model,steps,size\n123,[5],tiny-sd15,2,64\n")
    (row,) = jobs.expand_file(csv)
    assert row.request["prompt"] == "123" and row.key == jobs.expand({"prompt": "123", "seeds": [5], **TINY})[0].key


def test_a_bad_line_is_rejected_naming_its_line(tmp_path):
    path = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "ok", **TINY}, {"prompt": "x", "model": "tiny-sd15", "size": 100}])
    with pytest.raises(InvalidRequest) as e:
        jobs.expand_file(path)
    assert e.value.message.startswith("line 2:") and "multiple of 8" in e.value.message


def test_each_image_is_claimed_by_one_worker_and_an_expired_lease_is_reclaimed(tmp_path):
    m = Manifest(tmp_path / "m.sqlite")
    m.add(jobs.expand({"prompt": "p", "seeds": list(range(30)), **TINY}))
    claimed, lock = [], threading.Lock()

    def worker(name):
        mine = Manifest(tmp_path / "m.sqlite")  # its own connection, as a worker process has
        while (c := mine.claim(name, 60, 3)) is not None:
            with lock:
                claimed.append(c.key)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 30 and len(set(claimed)) == 30

    m2 = Manifest(tmp_path / "m2.sqlite")
    m2.add(jobs.expand({"prompt": "p", "seeds": [1], **TINY}))
    first = m2.claim("dead", lease_s=0.01, max_attempts=3)
    import time

    time.sleep(0.05)
    second = m2.claim("alive", lease_s=60, max_attempts=3)
    assert second.key == first.key and second.attempts == 2
    assert not m2.complete(first.key, "dead", "x.png")  # the dead worker lost its claim
    assert m2.complete(second.key, "alive", "x.png")
    assert m2.counts()["done"] == 1


def test_throughput_leaves_out_each_workers_first_image(tmp_path, monkeypatch):
    """Steady state is what more images would add: each worker's first image carries its model load and
    warm-up. Two workers making an image every 0.5 s after loads of 10 and 12 s run at 4 images/s."""
    from types import SimpleNamespace

    from lightdiff.pipeline import manifest as manifest_module

    clock = {"t": 100.0}
    monkeypatch.setattr(manifest_module, "time", SimpleNamespace(time=lambda: clock["t"]))
    m = Manifest(tmp_path / "m.sqlite")
    m.add(jobs.expand({"prompt": "p", "seeds": list(range(10)), **TINY}))
    done = sorted([(110 + 0.5 * i, "a") for i in range(5)] + [(112 + 0.5 * i, "b") for i in range(5)])
    for t, worker in done:
        clock["t"] = t - 0.1
        claim = m.claim(worker, 60, 3)
        clock["t"] = t
        assert m.complete(claim.key, worker, "x.png")
    t = m.throughput(since=100.0)
    assert (t["images"], t["workers"], t["steady_images"]) == (10, 2, 8)
    assert t["steady_images_per_s"] == pytest.approx(4.0)
    assert t["wall_s"] == pytest.approx(14.0) and t["images_per_s"] == pytest.approx(10 / 14, abs=1e-3)
    assert m.throughput(since=111.0)["images"] == 8  # images done before a run started are not its own
    assert m.throughput()["images_per_s"] is None  # no start: no rate with loads, the steady rate still
    assert m.throughput()["steady_images_per_s"] == pytest.approx(4.0)


def test_batch_resumes_without_remaking_done_images(tmp_path, capsys):
    lines = [{"prompt": f"shape {i}", "seed": 100 + i, **TINY} for i in range(10)]
    lines.append({"prompts": ["a", "b"], "seeds": [1], **TINY})  # 12 images in all
    path, out = write_jobs(tmp_path / "jobs.jsonl", lines), tmp_path / "out"

    assert main(["batch", str(path), "-o", str(out), "--limit", "5", "--devices", "cpu"]) == 1  # interrupted
    first = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    assert len(first) == 5
    capsys.readouterr()
    assert main(["batch", str(path), "-o", str(out), "--devices", "cpu"]) == 0
    assert "throughput: 7 images in" in capsys.readouterr().out  # this run's images, not the first run's
    pngs = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    assert len(pngs) == 12
    assert all(pngs[name] == mtime for name, mtime in first.items())  # not written again
    manifest = rows(out)
    assert len(manifest) == 12 and {r["status"] for r in manifest.values()} == {"done"}
    assert all(r["attempts"] == 1 for r in manifest.values())  # nothing was made twice
    for key, r in manifest.items():  # the file holds the image the row asked for
        meta = outputs.read_metadata(r["output"])
        assert r["output"].endswith(f"{key}.png") and meta["batch_key"] == key
        assert meta["seed"] == json.loads(r["request"])["seed"]

    # A done image whose file went missing is made again, and only that one.
    gone = sorted(out.glob("images/*.png"))[0]
    gone.unlink()
    capsys.readouterr()
    assert main(["batch", str(path), "-o", str(out), "--devices", "cpu"]) == 0
    assert "1 whose file was missing" in capsys.readouterr().out
    assert gone.exists()
    assert all((out / "images" / n).stat().st_mtime_ns == t for n, t in pngs.items() if n != gone.name)


def test_a_failing_image_is_retried_up_to_the_limit_and_reported(tmp_path, capsys):
    # Passes validation, fails when the worker loads it: the weights file does not exist.
    bad = {"prompt": "broken", "seed": 3, "weights": str(tmp_path / "missing.safetensors"), **TINY}
    path, out = write_jobs(tmp_path / "jobs.jsonl", [bad]), tmp_path / "out"
    assert main(["batch", str(path), "-o", str(out), "--max-attempts", "2", "--devices", "cpu"]) == 1
    (row,) = rows(out).values()
    assert row["status"] == "failed" and row["attempts"] == 2 and "missing.safetensors" in row["error"]
    capsys.readouterr()
    assert main(["batch", "--status", str(out)]) == 1
    report = capsys.readouterr().out
    assert "1 failed" in report and "line 1" in report and "missing.safetensors" in report
    # A rerun with a higher limit tries once more; with the same limit it does not.
    assert main(["batch", str(path), "-o", str(out), "--max-attempts", "2", "--devices", "cpu"]) == 1
    assert next(iter(rows(out).values()))["attempts"] == 2
    assert main(["batch", str(path), "-o", str(out), "--max-attempts", "3", "--devices", "cpu"]) == 1
    assert next(iter(rows(out).values()))["attempts"] == 3


def test_url_output_needs_a_manifest_path_and_stores_atomically(tmp_path):
    from PIL import Image

    assert main(["batch", str(write_jobs(tmp_path / "j.jsonl", [{"prompt": "x", **TINY}])),
                 "-o", "memory://nowhere"]) == 2
    store = Store("memory://pipeline-test/out")
    path = store.write("abc", Image.new("RGB", (8, 8), "red"), {"seed": 1, "prompt": "x"})
    assert store.exists(path) and store.keys() == ["abc"]  # no temporary file left beside it
    import fsspec

    with fsspec.open(store.url(path), "rb") as f:  # the URL recorded in the manifest opens the image
        assert Image.open(f).size == (8, 8)


def test_ray_missing_is_a_clear_error(monkeypatch):
    import sys

    from lightdiff.pipeline.ray_runner import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(LightdiffError) as e:
        import_ray()
    assert "pip install 'lightdiff[ray]'" in str(e.value)


def test_two_worker_processes_share_the_manifest_and_reclaim_a_dead_workers_image(tmp_path):
    path, out = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a red cube", "count": 6, **TINY}]), tmp_path / "out"
    # A worker of an earlier run claimed one image and died: its lease has run out.
    stale = Manifest(out / "manifest.sqlite")
    stale.add(jobs.expand_file(path))
    held = stale.claim("dead-worker", lease_s=0.01, max_attempts=3)

    assert main(["batch", str(path), "-o", str(out), "--devices", "cpu,cpu"]) == 0
    manifest = rows(out)
    assert len(manifest) == 6 and {r["status"] for r in manifest.values()} == {"done"}
    assert manifest[held.key]["attempts"] == 2  # re-claimed once, made once
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == sorted(manifest)


def test_each_gpu_worker_sees_only_its_own_gpu(monkeypatch):
    """cuda:N workers run with CUDA_VISIBLE_DEVICES=N and device "cuda" (within an already narrowed set too),
    so nothing in one worker can allocate on another's GPU."""
    from lightdiff.runtime.device import worker_env

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert worker_env("cuda:1")[0] == "cuda" and worker_env("cuda:1")[1]["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert worker_env("cuda:1")[1]["CUDA_VISIBLE_DEVICES"] == "5"
    device, env = worker_env("cpu")
    assert device == "cpu" and env["CUDA_VISIBLE_DEVICES"] == "4,5"
