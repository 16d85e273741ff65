"""Bad and hostile inputs: each is refused before anything is queued, with its status and stable code.

Runs the real app in-process (no worker: validation happens before a job exists).
"""

import base64
import io
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lightdiff.server.app import create_app
from lightdiff.server.config import ServerConfig

BODY_LIMIT = 3 * 2**20


def png_bytes(size=(64, 64), color=(200, 30, 30), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def declared_png(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


OK_IMAGE = b64(png_bytes())
TXT = {"model": "tiny-sd15", "prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
IMG = {"workflow": "img2img", "model": "tiny-sd15", "prompt": "x", "steps": 2, "init_image": OK_IMAGE}
INPAINT = {**IMG, "workflow": "inpaint", "mask_image": OK_IMAGE}


def job(**kw):
    return {**TXT, **kw}


def raw(text: str) -> dict:
    return {"content": text, "headers": {"Content-Type": "application/json"}}


def multipart_edit(image: bytes, **fields):
    return {"files": {"image": ("x.png", image, "image/png")}, "data": {"prompt": "x", **fields}}


QUEUED = "QUEUED_JOB"  # replaced by a real queued job's id

CASES = [
    # sizes, steps, batch, numbers
    ("width below 8", "POST", "/api/jobs", {"json": job(width=7)}, 422, "invalid_request"),
    ("width not a multiple of 8", "POST", "/api/jobs", {"json": job(width=100)}, 422, "invalid_request"),
    ("width over the family max", "POST", "/api/jobs", {"json": job(width=4096)}, 422, "invalid_request"),
    ("height negative", "POST", "/api/jobs", {"json": job(height=-64)}, 422, "invalid_request"),
    ("steps zero", "POST", "/api/jobs", {"json": job(steps=0)}, 422, "invalid_request"),
    ("steps huge", "POST", "/api/jobs", {"json": job(steps=10**6)}, 422, "invalid_request"),
    ("batch zero", "POST", "/api/jobs", {"json": job(batch_size=0)}, 422, "invalid_request"),
    ("batch huge", "POST", "/api/jobs", {"json": job(batch_size=1000)}, 422, "invalid_request"),
    ("guidance NaN", "POST", "/api/jobs", raw('{"prompt": "x", "guidance": NaN}'), 422, "invalid_request"),
    ("guidance Infinity", "POST", "/api/jobs", raw('{"prompt": "x", "guidance": Infinity}'), 422, "invalid_request"),
    ("seed negative", "POST", "/api/jobs", {"json": job(seed=-5)}, 422, "invalid_request"),
    ("seed over 2**32", "POST", "/api/jobs", {"json": job(seed=2**40)}, 422, "invalid_request"),
    ("huge prompt", "POST", "/api/jobs", {"json": job(prompt="a" * 1_000_000)}, 422, "invalid_request"),
    ("prompt not a string", "POST", "/api/jobs", {"json": job(prompt=123)}, 422, "invalid_request"),
    ("unknown field", "POST", "/api/jobs", {"json": job(foo=1)}, 422, "invalid_request"),
    ("unknown scheduler", "POST", "/api/jobs", {"json": job(scheduler="bogus")}, 422, "invalid_request"),
    ("unknown workflow", "POST", "/api/jobs", {"json": job(workflow="rm -rf /")}, 422, "invalid_request"),
    ("body is a list", "POST", "/api/jobs", {"json": [1, 2]}, 422, "invalid_request"),
    ("malformed JSON", "POST", "/api/jobs", raw('{"prompt": '), 400, "invalid_json"),
    # models and weights
    ("unknown model", "POST", "/api/jobs", {"json": job(model="no-such-model")}, 404, "unknown_model"),
    ("model path traversal", "POST", "/api/jobs", {"json": job(model="../../etc/passwd")}, 404, "unknown_model"),
    ("weights: a file path", "POST", "/api/jobs", {"json": job(weights="/etc/passwd")}, 403, "weights_not_allowed"),
    ("weights: a pickle", "POST", "/api/jobs", {"json": job(weights="/tmp/model.ckpt")}, 400, "unsafe_weights_format"),
    ("weights: a hub id", "POST", "/api/jobs", {"json": job(weights="hub:evil/repo")}, 403, "weights_not_allowed"),
    ("controlnet: a path", "POST", "/api/jobs",
     {"json": {**TXT, "workflow": "controlnet", "control_image": OK_IMAGE, "controlnet": "/tmp/evil"}},
     403, "weights_not_allowed"),
    # images: broken, hostile, bombs, paths
    ("init_image not base64", "POST", "/api/jobs", {"json": {**IMG, "init_image": "hello world!"}}, 422, "invalid_image"),
    ("init_image a path", "POST", "/api/jobs", {"json": {**IMG, "init_image": "/etc/passwd"}}, 422, "invalid_image"),
    ("init_image path traversal", "POST", "/api/jobs", {"json": {**IMG, "init_image": "../../../../etc/hosts"}},
     422, "invalid_image"),
    ("init_image broken bytes", "POST", "/api/jobs", {"json": {**IMG, "init_image": b64(b"\x89PNG\r\n\x1a\nbroken")}},
     422, "invalid_image"),
    ("init_image truncated PNG", "POST", "/api/jobs", {"json": {**IMG, "init_image": b64(png_bytes((256, 256))[:200])}},
     422, "invalid_image"),
    ("init_image GIF", "POST", "/api/jobs", {"json": {**IMG, "init_image": b64(png_bytes(fmt="GIF"))}},
     422, "invalid_image"),
    ("init_image SVG data URI", "POST", "/api/jobs",
     {"json": {**IMG, "init_image": "data:image/svg+xml;base64," + b64(b"<svg onload='alert(1)'/>")}}, 422, "invalid_image"),
    ("init_image decompression bomb", "POST", "/api/jobs", {"json": {**IMG, "init_image": b64(declared_png(100_000, 100_000))}},
     413, "image_too_large"),
    ("init_image over the pixel cap", "POST", "/api/jobs", {"json": {**IMG, "init_image": b64(declared_png(5000, 5000))}},
     413, "image_too_large"),
    ("mask_image a path", "POST", "/api/jobs", {"json": {**INPAINT, "mask_image": "/etc/shadow"}}, 422, "invalid_image"),
    # ids and file names
    # an encoded "/" splits the path: no route matches, so no id ever reaches a file system call
    ("job id path traversal", "GET", "/api/jobs/..%2F..%2Fjobs.db", {}, 404, "not_found"),
    ("job id dot-dot", "GET", "/api/jobs/%2E%2E", {}, 404, "job_not_found"),
    ("job id SQL", "GET", "/api/jobs/1' OR '1'='1", {}, 404, "job_not_found"),
    ("unknown job id", "GET", "/api/jobs/" + "0" * 32, {}, 404, "job_not_found"),
    ("cancel unknown job", "POST", "/api/jobs/" + "f" * 32 + "/cancel", {}, 404, "job_not_found"),
    ("retry bad id", "POST", "/api/jobs/..%5Cx/retry", {}, 404, "job_not_found"),
    ("events of bad id", "GET", "/api/jobs/%00etc/events", {}, 404, "job_not_found"),
    ("image index traversal", "GET", f"/api/jobs/{QUEUED}/images/..%2F..%2Fjobs.db", {}, 404, "not_found"),
    ("image index not a number", "GET", f"/api/jobs/{QUEUED}/images/%2E%2E", {}, 422, "invalid_request"),
    ("image of a queued job", "GET", f"/api/jobs/{QUEUED}/images/0", {}, 404, "image_not_found"),
    ("negative image index", "GET", f"/api/jobs/{QUEUED}/images/-1", {}, 404, "image_not_found"),
    ("upload name traversal", "GET", "/api/uploads/..%2F..%2Fjobs.db", {}, 404, "not_found"),
    ("upload name dot-dot", "GET", "/api/uploads/%2E%2E", {}, 404, "upload_not_found"),
    ("upload name not a hash", "GET", "/api/uploads/" + "z" * 64, {}, 404, "upload_not_found"),
    ("list with bogus status", "GET", "/api/jobs?status=bogus", {}, 422, "invalid_request"),
    ("list with huge limit", "GET", "/api/jobs?limit=100000", {}, 422, "invalid_request"),
    ("bad Idempotency-Key", "POST", "/api/jobs", {"json": TXT, "headers": {"Idempotency-Key": "has spaces in it"}},
     422, "invalid_idempotency_key"),
    # browser and transport
    ("foreign Origin", "POST", "/api/jobs", {"json": TXT, "headers": {"Origin": "http://evil.example"}},
     403, "forbidden_origin"),
    ("null Origin", "POST", "/api/jobs", {"json": TXT, "headers": {"Origin": "null"}}, 403, "forbidden_origin"),
    ("cross-site fetch without Origin", "POST", f"/api/jobs/{QUEUED}/cancel", {"headers": {"Sec-Fetch-Site": "cross-site"}},
     403, "forbidden_origin"),
    ("DNS rebinding Host", "GET", "/api/jobs", {"headers": {"Host": "evil.example:7860"}}, 403, "forbidden_host"),
    ("oversized body", "POST", "/api/jobs", {"json": job(prompt="a" * (BODY_LIMIT + 10))}, 413, "body_too_large"),
    ("method not allowed", "DELETE", "/api/jobs", {}, 405, "method_not_allowed"),
    ("unknown path", "GET", "/api/nothing-here", {}, 404, "not_found"),
    # AUTOMATIC1111 (its error shape: {"error": code, "detail": ...})
    ("a1111 steps negative", "POST", "/sdapi/v1/txt2img", {"json": {"prompt": "x", "steps": -1}}, 422, "invalid_request"),
    ("a1111 unknown sampler", "POST", "/sdapi/v1/txt2img", {"json": {"prompt": "x", "sampler_name": "Bogus"}},
     422, "unknown_sampler"),
    ("a1111 bad init image", "POST", "/sdapi/v1/img2img", {"json": {"prompt": "x", "init_images": ["not-an-image"]}},
     422, "invalid_image"),
    ("a1111 bad checkpoint", "POST", "/sdapi/v1/options", {"json": {"sd_model_checkpoint": "../../x"}}, 404, "unknown_model"),
    ("a1111 unknown upscaler", "POST", "/sdapi/v1/txt2img",
     {"json": {"prompt": "x", "enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}}, 422, "unknown_upscaler"),
    # OpenAI (its error shape: {"error": {"message", "type", "param", "code"}})
    ("openai bad size", "POST", "/v1/images/generations", {"json": {"prompt": "x", "size": "big"}}, 400, "invalid_size"),
    ("openai n too large", "POST", "/v1/images/generations", {"json": {"prompt": "x", "n": 100}}, 422, "invalid_request"),
    ("openai missing prompt", "POST", "/v1/images/generations", {"json": {"n": 1}}, 422, "invalid_request"),
    ("openai edit with a text file", "POST", "/v1/images/edits", multipart_edit(b"just text"), 422, "invalid_image"),
    ("openai edit with a bomb", "POST", "/v1/images/edits", multipart_edit(declared_png(100_000, 100_000)),
     413, "image_too_large"),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    cfg = ServerConfig(data_dir=tmp_path_factory.mktemp("inputs"), max_body_bytes=BODY_LIMIT)
    return create_app(cfg, start_workers=False)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def queued_id(client):
    r = client.post("/api/jobs", json=TXT)
    assert r.status_code == 201
    return r.json()["id"]


def error_code(path: str, body: dict) -> str:
    if path.startswith("/sdapi/"):
        return body["error"]
    return body["error"]["code"]


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name,method,path,kwargs,status,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_its_code(client, queued_id, name, method, path, kwargs, status, code):
    before = client.get("/api/jobs").json()["counts"]["queued"]
    r = client.request(method, path.replace(QUEUED, queued_id), **kwargs)
    assert r.status_code == status, r.text[:500]
    assert error_code(path, r.json()) == code, r.text[:500]
    assert client.get("/api/jobs").json()["counts"]["queued"] == before  # nothing was queued


def check_native_shape(r):
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"code", "message", "hint"} <= set(err) <= {"code", "message", "hint", "details"}, err
    assert err["code"] and err["code"].replace("_", "").isalpha() and err["code"].islower()
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["hint"], str)


def test_every_native_error_has_one_shape(client, app, queued_id):
    """Every native route, called with ids that do not exist and with bad bodies, answers an error
    in the one shape; so do the table's native cases."""
    responses = []
    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/api"):
            continue
        for method in route.methods - {"HEAD"}:
            for job_id, index in (("not-a-job", "0"), ("0" * 32, "0"), (queued_id, "7"), (queued_id, "x")):
                url = path.replace("{job_id}", job_id).replace("{index}", index).replace("{sha256}", "nope")
                responses.append(client.request(method, url, json=[1] if method == "POST" else None))
    for _, method, path, kwargs, status, _ in CASES:
        if path.startswith("/api"):
            responses.append(client.request(method, path.replace(QUEUED, queued_id), **kwargs))
    errors = [r for r in responses if r.status_code >= 400]
    assert len(errors) > 50
    for r in errors:
        check_native_shape(r)
    assert all(r.status_code < 500 for r in responses)


def test_openai_errors_have_openai_shape(client):
    r = client.post("/v1/images/generations", json={"prompt": "x", "size": "big"})
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == "size"
    assert err["type"] == "invalid_request_error"


def test_idempotency_key_reused_for_another_request_conflicts(client):
    key = {"Idempotency-Key": "inputs-key-1"}
    first = client.post("/api/jobs", json=TXT, headers=key)
    again = client.post("/api/jobs", json=TXT, headers=key)
    other = client.post("/api/jobs", json={**TXT, "prompt": "something else"}, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_same_origin_and_programs_may_submit(client):
    assert client.post("/api/jobs", json=TXT, headers={"Origin": "http://127.0.0.1"}).status_code == 201
    assert client.post("/api/jobs", json=TXT).status_code == 201


def test_model_outside_the_served_list_is_refused(tmp_path):
    app = create_app(ServerConfig(data_dir=tmp_path, models=("tiny-sd15",)), start_workers=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post("/api/jobs", json={**TXT, "model": "tiny-qwen-image"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_served"


class TestToken:
    """Bound beyond loopback, the server demands its token on every API request."""

    @pytest.fixture(scope="class")
    def tc(self, tmp_path_factory):
        cfg = ServerConfig(data_dir=tmp_path_factory.mktemp("token"), host="0.0.0.0", token="s3cret-token")
        with TestClient(create_app(cfg, start_workers=False), base_url="http://192.168.1.20:7860") as c:
            yield c

    @pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cret"},
                                         {"Authorization": "Basic czNjcmV0LXRva2Vu"}])
    @pytest.mark.parametrize("method,path", [("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", "/api/system"),
                                             ("GET", "/sdapi/v1/sd-models"), ("POST", "/v1/images/generations")])
    def test_missing_or_wrong_token_is_401(self, tc, headers, method, path):
        r = tc.request(method, path, headers=headers, json=TXT if method == "POST" else None)
        assert r.status_code == 401
        assert error_code(path, r.json()) == "unauthorized"

    def test_token_in_either_header_is_accepted(self, tc):
        assert tc.post("/api/jobs", json=TXT, headers={"Authorization": "Bearer s3cret-token"}).status_code == 201
        assert tc.get("/api/jobs", headers={"X-API-Key": "s3cret-token"}).status_code == 200

    def test_web_ui_page_is_public_and_holds_no_data(self, tc):
        assert tc.get("/").status_code == 200
        assert tc.get("/static/app.js").status_code == 200


def test_secure_generates_a_token_off_loopback(tmp_path):
    from lightdiff.server.config import secure

    cfg, generated = secure(ServerConfig(data_dir=tmp_path, host="0.0.0.0"))
    assert generated and len(cfg.token) >= 24
    same, generated = secure(ServerConfig(data_dir=tmp_path, host="127.0.0.1"))
    assert not generated and same.token is None


def test_models_list_says_what_fits_the_budget(tmp_path):
    plan = pytest.importorskip("lightdiff.runtime.plan")
    app = create_app(ServerConfig(data_dir=tmp_path, vram_budget_gb=8.0), start_workers=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        models = {m["id"]: m for m in c.get("/api/models").json()["models"]}
    sd15 = models["sd15"]["fits"]
    assert sd15["fits"] and sd15["plan"] in plan.names() and sd15["vram_gb"] == 8.0
    assert all("fits" in m for m in models.values())


def test_missing_workflow_is_501_in_each_api_shape(client, monkeypatch):
    """Until a workflow's file exists the APIs that map onto it say so, each in its own error format."""
    from lightdiff.server import validation

    monkeypatch.setattr(validation, "available_workflows", lambda: ["txt2img"])
    native = client.post("/api/jobs", json=INPAINT)
    assert native.status_code == 501 and native.json()["error"]["code"] == "workflow_unavailable"
    a1111 = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [OK_IMAGE]})
    assert a1111.status_code == 501 and a1111.json()["error"] == "workflow_unavailable"
    openai = client.post("/v1/images/edits", **multipart_edit(png_bytes()))
    assert openai.status_code == 501 and openai.json()["error"]["code"] == "workflow_unavailable"
    assert openai.json()["error"]["type"] == "not_implemented_error"


def test_api_is_documented(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/jobs", "/api/jobs/{job_id}/events", "/sdapi/v1/txt2img", "/v1/images/generations"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_serve_arguments(tmp_path):
    from lightdiff.cli import build_parser
    from lightdiff.commands.serve import build_config
    from lightdiff.errors import UnknownModel

    parse = build_parser().parse_args
    cfg, generated = build_config(parse(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path), "--devices", "cpu",
                                         "--models", "tiny-sd15", "tiny-qwen-image"]))
    assert generated and cfg.token and cfg.default_model == "tiny-sd15" and cfg.models == ("tiny-sd15", "tiny-qwen-image")
    cfg, generated = build_config(parse(["serve", "--data-dir", str(tmp_path), "--devices", "cpu"]))
    assert not generated and cfg.token is None and cfg.host == "127.0.0.1" and cfg.port == 7860
    assert cfg.fast == "auto"
    # --fast off reaches the workers' engines: no fp8 compute, nothing compiled
    from lightdiff.server.worker import make_engine

    off, _ = build_config(parse(["serve", "--data-dir", str(tmp_path), "--devices", "cpu", "--fast", "off"]))
    assert make_engine(off, "cpu").fast == "off" and make_engine(cfg, "cpu").fast == "auto"
    with pytest.raises(UnknownModel):
        build_config(parse(["serve", "--data-dir", str(tmp_path), "--devices", "cpu", "--models", "nope"]))


def test_oversized_chunked_body_is_413(client):
    """No Content-Length (chunked upload): the body is counted as it is read."""
    def chunks():
        for _ in range(BODY_LIMIT // 2**16 + 2):
            yield b" " * 2**16

    r = client.post("/api/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
