"""A real `lightdiff serve` (API process + CPU worker process) on the tiny SD1.5 twin:
jobs round-trip, events stream, cancel and retry, and the A1111 and OpenAI endpoints answer
with decodable images."""

import base64
import io
import json
import time

import pytest
from PIL import Image

from lightdiff.server.testing import ServerProcess, wait_finished

TXT = {"model": "tiny-sd15", "prompt": "a red circle", "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("live") / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def png_b64(size=(64, 64), color=(0, 120, 255)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def sse_events(client, job_id) -> list[dict]:
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


def test_job_round_trip_streams_events_and_serves_the_image(client, server):
    r = client.post("/api/jobs", json={**TXT, "seed": 7})
    assert r.status_code == 201
    job_id = r.json()["id"]
    events = sse_events(client, job_id)
    types = [e["type"] for e in events]
    assert types[0] == "queued" and types[1] == "loading" and types[-1] == "done"
    assert [(e["step"], e["steps"]) for e in events if e["type"] == "running"] == [(1, 2), (2, 2)]
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "done" and job["attempts"] == 1 and len(job["images"]) == 1
    png = client.get(job["images"][0]["url"])
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    meta = client.get(job["images"][0]["metadata_url"]).json()
    assert meta["job_id"] == job_id and meta["seed"] == 7 and meta["model"] == "tiny-sd15"
    # on disk: exactly the one image, under outputs/<job id>/, no temporary file
    files = sorted(p.name for p in (server.data_dir / "outputs" / job_id).iterdir())
    assert files == ["0-a1.png"]


def test_random_seed_is_fixed_at_submission(client):
    job = client.post("/api/jobs", json=TXT).json()
    seed = job["request"]["seed"]
    done = wait_finished(client, [job["id"]])[job["id"]]
    assert done["images"][0]["seed"] == seed


def test_idempotency_key_submits_once(client, server):
    key = {"Idempotency-Key": "live-once-1"}
    first = client.post("/api/jobs", json=TXT, headers=key)
    second = client.post("/api/jobs", json=TXT, headers=key)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    wait_finished(client, [first.json()["id"]])
    same_key = [j for j in client.get("/api/jobs", params={"limit": 500}).json()["jobs"]
                if j["request"] == first.json()["request"]]
    assert len(same_key) == 1


def test_cancel_one_job_leaves_the_others(client):
    long = client.post("/api/jobs", json={**TXT, "steps": 400}).json()
    queued = client.post("/api/jobs", json=TXT).json()
    after = client.post("/api/jobs", json=TXT).json()
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{long['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = client.post(f"/api/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.post(f"/api/jobs/{long['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    jobs = wait_finished(client, [long["id"], queued["id"], after["id"]])
    assert jobs[long["id"]]["status"] == "cancelled"
    assert jobs[long["id"]]["progress"]["step"] < 400  # stopped mid-way, at a step boundary
    assert jobs[queued["id"]]["status"] == "cancelled"
    assert jobs[after["id"]]["status"] == "done"
    again = client.post(f"/api/jobs/{after['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    # retry: a new job with the same request (same seed), done
    retry = client.post(f"/api/jobs/{queued['id']}/retry")
    assert retry.status_code == 201 and retry.json()["retry_of"] == queued["id"]
    assert retry.json()["request"] == jobs[queued["id"]]["request"]
    assert wait_finished(client, [retry.json()["id"]])[retry.json()["id"]]["status"] == "done"
    assert client.post(f"/api/jobs/{after['id']}/retry").status_code == 409


def test_a1111_txt2img_round_trip(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "negative_prompt": "dog", "steps": 2, "width": 64,
                                               "height": 64, "seed": 5, "batch_size": 2, "n_iter": 2,
                                               "sampler_name": "Euler a", "cfg_scale": 6, "restore_faces": True})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert [decode(b).size for b in body["images"]] == [(64, 64)] * 4
    info = json.loads(body["info"])
    assert info["all_seeds"] == [5, 6, 7, 8]  # A1111 numbering across batches
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 6
    assert info["lightdiff_ignored"] == {"restore_faces": True}
    assert "Steps: 2" in info["infotexts"][0]
    assert body["parameters"]["prompt"] == "a cat"


def test_a1111_hires_img2img_and_inpaint(client):
    hr = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1,
                                                "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
                                                "denoising_strength": 0.5, "hr_second_pass_steps": 2})
    assert hr.status_code == 200, hr.text[:300]
    assert decode(hr.json()["images"][0]).size == (128, 128)
    assert json.loads(hr.json()["info"])["lightdiff_workflow"] == "hires_fix"
    i2i = client.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 4, "init_images": [png_b64()],
                                                 "denoising_strength": 0.5, "seed": 3})
    assert i2i.status_code == 200, i2i.text[:300]
    assert decode(i2i.json()["images"][0]).size == (64, 64)
    assert json.loads(i2i.json()["info"])["lightdiff_workflow"] == "img2img"
    mask = png_b64(color=(255, 255, 255))
    inp = client.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 4, "init_images": [png_b64()], "mask": mask,
                                                 "denoising_strength": 0.75, "mask_blur": 2})
    assert inp.status_code == 200, inp.text[:300]
    assert json.loads(inp.json()["info"])["lightdiff_workflow"] == "inpaint"


def test_a1111_options_models_samplers_progress(client):
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd15 [abc]"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-sd15"
    assert "tiny-sd15" in [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert "Euler a" in [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    progress = client.get("/sdapi/v1/progress").json()
    assert 0 <= progress["progress"] <= 1 and "sampling_steps" in progress["state"]
    assert client.get("/sdapi/v1/memory").json()["ram"]["total"] > 0


def test_openai_generations_and_edits(client):
    r = client.post("/v1/images/generations", json={"model": "tiny-sd15", "prompt": "a boat", "n": 2, "size": "64x64",
                                                    "response_format": "b64_json"})
    assert r.status_code == 200, r.text[:300]
    assert [decode(d["b64_json"]).size for d in r.json()["data"]] == [(64, 64)] * 2
    r = client.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "a boat", "size": "64x64"})
    url = r.json()["data"][0]["url"]
    assert client.get(url).headers["content-type"] == "image/png"
    image, mask = (base64.b64decode(png_b64(color=c)) for c in ((0, 120, 255), (255, 255, 255)))
    r = client.post("/v1/images/edits", files={"image": ("in.png", image, "image/png"), "mask": ("m.png", mask, "image/png")},
                    data={"prompt": "a sun", "size": "64x64", "response_format": "b64_json", "model": "tiny-sd15"})
    assert r.status_code == 200, r.text[:300]
    assert decode(r.json()["data"][0]["b64_json"]).size == (64, 64)


def test_system_reports_the_worker_and_its_device(client):
    info = client.get("/api/system").json()
    (worker,) = info["workers"]
    assert worker["alive"] and worker["device"] == "cpu" and worker["pid"]
    assert info["env"]["torch"] and info["queue"]["done"] >= 1
