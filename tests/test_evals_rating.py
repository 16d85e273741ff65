"""Blind rating (store + app + page) and the eval report, on a small synthetic eval folder."""

import json
import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lightdiff.evals import imagestats
from lightdiff.evals.rate_app import create_rate_app
from lightdiff.evals.run import EvalConfig, Item
from lightdiff.evals.store import RatingStore
from lightdiff.evals.suites import load_suite
from lightdiff.outputs import save_png

MODELS = ["model-alpha", "model-beta"]


def make_evalrun(root, n_prompts=3, seeds=(0, 1), rng_seed=0):
    """An eval folder as `lightdiff eval` leaves it, with small images and made-up statistics in which
    model-alpha is clearly more colourful than model-beta and the two are equally noisy."""
    rng = np.random.default_rng(rng_seed)
    suite = load_suite("article5")
    cfg = EvalConfig(models=MODELS, suite=suite, seeds=list(seeds), limit=n_prompts)
    (root / "manifest.json").write_text(json.dumps(cfg.manifest()))
    lines = []
    for item in cfg.items():
        colour = (200, 40, 40) if item.model == MODELS[0] else (40, 40, 200)
        img = Image.new("RGB", (32, 32), colour)
        save_png(img, root / item.relpath(), {"model": item.model, "prompt": item.prompt.en, "seed": item.seed})
        stats = {name: float(rng.normal(10, 1)) for name in imagestats.METRIC_NAMES}
        stats["colourfulness"] = float(rng.normal(60 if item.model == MODELS[0] else 30, 2))
        lines.append(json.dumps({"model": item.model, "prompt": item.prompt.id, "scenario": item.prompt.scenario,
                                 "lang": "en", "seed": item.seed, "key": item.key, "path": item.relpath(), **stats}))
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")
    return cfg


@pytest.fixture
def evalrun(tmp_path):
    make_evalrun(tmp_path)
    return tmp_path


def test_five_blind_comparisons_are_stored_by_model_name(evalrun):
    client = TestClient(create_rate_app(evalrun, seed=1))
    truth = {}  # what the browser could never know: read from the image colour
    for _ in range(5):
        task = client.post("/api/next", json={"rater": "r1", "mode": "pair"}).json()
        assert not task["done"]
        assert set(task) == {"done", "token", "mode", "prompt", "answered", "total"}
        text = json.dumps(task)
        assert not any(m in text for m in MODELS) and "images/" not in text
        sides = {}
        for side in ("left", "right"):
            res = client.get(f"/api/image/{task['token']}/{side}")
            assert res.status_code == 200 and res.headers["content-type"] == "image/png"
            assert not any(m.encode() in res.content for m in MODELS)  # PNG text chunks stripped
            import io

            red = Image.open(io.BytesIO(res.content)).convert("RGB").getpixel((5, 5))[0] > 128
            sides[side] = MODELS[0] if red else MODELS[1]
        assert sorted(sides.values()) == MODELS
        # The rater always picks model-alpha, wherever it is shown.
        choice = "left" if sides["left"] == MODELS[0] else "right"
        truth[task["token"]] = (sides, choice)
        assert client.post("/api/answer", json={"token": task["token"], "choice": choice}).json() == {"ok": True}

    rows = RatingStore(evalrun / "ratings.sqlite").rows("comparisons")
    assert len(rows) == 5
    for r in rows:
        sides, choice = truth[r["token"]]
        assert (r["model_left"], r["model_right"], r["choice"]) == (sides["left"], sides["right"], choice)
        assert r["preferred"] == MODELS[0] and r["rater"] == "r1"
        assert r["answered_at"] >= r["shown_at"] > 0
    assert {r["model_left"] for r in rows} == set(MODELS)  # sides really are randomised (seeded)
    comps = RatingStore(evalrun / "ratings.sqlite").comparisons()
    assert all({"a": c["model_a"], "b": c["model_b"]}[c["choice"]] == MODELS[0] for c in comps)


def test_answers_are_validated_and_given_once(evalrun):
    client = TestClient(create_rate_app(evalrun, seed=0))
    task = client.post("/api/next", json={"rater": "r1", "mode": "pair"}).json()
    bad = client.post("/api/answer", json={"token": task["token"], "choice": "both"})
    assert bad.status_code == 422 and "left, right or tie" in bad.json()["error"]["message"]
    # A reload before answering shows the same task again.
    assert client.post("/api/next", json={"rater": "r1", "mode": "pair"}).json()["token"] == task["token"]
    assert client.post("/api/answer", json={"token": task["token"], "choice": "tie"}).status_code == 200
    again = client.post("/api/answer", json={"token": task["token"], "choice": "left"})
    assert again.status_code == 422 and "already answered" in again.json()["error"]["message"]
    assert client.post("/api/next", json={"rater": " ", "mode": "pair"}).status_code == 422


def test_repeats_come_back_and_the_study_ends(evalrun):
    client = TestClient(create_rate_app(evalrun, repeat_every=4, seed=3))
    n_pairs = 3 * 2  # prompts x seeds, one model pair each
    answered = 0
    while True:
        task = client.post("/api/next", json={"rater": "r2", "mode": "pair"}).json()
        if task["done"]:
            break
        client.post("/api/answer", json={"token": task["token"], "choice": "left"})
        answered += 1
        assert answered < 50
    rows = RatingStore(evalrun / "ratings.sqlite").rows("comparisons")
    repeats = [r for r in rows if r["is_repeat"]]
    assert len(rows) == answered == task["answered"] and task["total"] == n_pairs
    assert len(rows) - len(repeats) == n_pairs and len(repeats) >= 1
    firsts = {(r["prompt"], r["seed"]) for r in rows if not r["is_repeat"]}
    assert {(r["prompt"], r["seed"]) for r in repeats} <= firsts


def test_score_mode_stores_one_to_ten(evalrun):
    client = TestClient(create_rate_app(evalrun, seed=0))
    task = client.post("/api/next", json={"rater": "r3", "mode": "score"}).json()
    assert client.get(f"/api/image/{task['token']}/right").status_code == 422  # one image only
    assert client.post("/api/answer", json={"token": task["token"], "score": 11}).status_code == 422
    assert client.post("/api/answer", json={"token": task["token"], "score": 7}).status_code == 200
    (row,) = RatingStore(evalrun / "ratings.sqlite").scores()
    assert row["score"] == 7 and row["model"] in MODELS and row["rater"] == "r3"


# ------------------------------------------------------------------------------------------ report


def simulate_ratings(run, raters=("r1", "r2", "r3"), seed=0):
    """Raters who prefer model-alpha 80% of the time and score it about 2 points higher."""
    rng = np.random.default_rng(seed)
    store = RatingStore(run / "ratings.sqlite")
    cfg = EvalConfig(models=MODELS, suite=load_suite("article5"), seeds=[0, 1], limit=3)
    for rater in raters:
        for item in cfg.items():
            if item.model != MODELS[0]:
                continue
            unit = {"prompt": item.prompt.id, "lang": "en", "seed": item.seed, "scenario": item.prompt.scenario}
            other = Item(MODELS[1], item.prompt, "en", item.seed)
            for repeat in (False, True) if item.seed == 0 else (False,):
                left, right = (item, other) if rng.random() < 0.5 else (other, item)
                token = store.new_task(rater, "pair", unit, (left.model, left.relpath()),
                                       (right.model, right.relpath()), is_repeat=repeat)
                alpha_wins = rng.random() < 0.8
                store.answer_pair(token, "left" if (left.model == MODELS[0]) == alpha_wins else "right")
            for model, base in ((MODELS[0], 7.0), (MODELS[1], 5.0)):
                token = store.new_task(rater, "score", unit, (model, "x.png"))
                store.answer_score(token, float(np.clip(round(base + rng.normal(0, 1)), 1, 10)))


def test_eval_report_from_a_synthetic_run(tmp_path, capsys):
    from lightdiff.cli import main
    from lightdiff.evals.report import build_eval_document
    from lightdiff.evals.run import write_contact_sheets

    run = tmp_path / "run"
    run.mkdir()
    cfg = make_evalrun(run)
    write_contact_sheets(run, cfg, thumb=32)
    simulate_ratings(run)
    doc = build_eval_document(run, n_boot=100, n_resamples=200)
    titles = [s.title for s in doc.sections]
    assert titles[:5] == ["Setup", "Absolute scores (1-10)", "Blind pairwise comparisons",
                          "Rater agreement and consistency", "What this study can detect"]
    score_table = next(t for t in doc.tables() if t.caption.startswith("Mean score per image"))
    overall = score_table.rows[-1]
    assert overall[0] == "all"
    alpha_mean, beta_mean = (float(c.split()[0]) for c in overall[1:])
    assert alpha_mean > beta_mean + 1
    bt = next(t for t in doc.tables() if t.caption.startswith("Bradley-Terry"))
    top_all = next(r for r in bt.rows if r[0] == "all")
    assert top_all[1] == MODELS[0]  # rows sorted by strength within each group
    text = " ".join(b.text for s in doc.sections for b in s.blocks if hasattr(b, "text"))
    saturation = next(t for t in text.split("Remark: ") if t.startswith('"more saturated colour"'))
    assert re.search(r"colourfulness: model-alpha [\d.]+ vs model-beta [\d.]+, clear\.", saturation)
    assert "noise_sigma" not in saturation
    assert "5 prompts x 1 seed(s) x 3 raters" in text  # the article's study size
    assert "3 prompts x 2 seed(s) x 3 raters" in text
    consistency = next(t for t in doc.tables() if t.headers[0] == "rater" and "consistency" in t.headers)
    assert [r[0] for r in consistency.rows] == ["r1", "r2", "r3", "all"]
    assert any(r[1] == "skipped: weights not available" for t in doc.tables() if t.headers == ["metric", "status"]
               for r in t.rows)
    assert len(doc.charts()) == 3  # one contact sheet per prompt

    out = tmp_path / "report"
    assert main(["eval", "--report", str(run), "--boot", "100", "-o", str(out)]) == 0
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # self-contained: no external address
    assert "Krippendorff" in md and "Bradley-Terry" in md and "sheet-" in md


def test_report_without_ratings_says_what_is_missing(tmp_path):
    from lightdiff.evals.report import build_eval_document

    make_evalrun(tmp_path)
    doc = build_eval_document(tmp_path, n_boot=50, n_resamples=100)
    text = " ".join(b.text for s in doc.sections for b in s.blocks if hasattr(b, "text"))
    assert "No absolute scores yet" in text and "No pairwise comparisons yet" in text
    assert "sized for 3 raters" in text


# ----------------------------------------------------------------------------- headless browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_a_rater_clicks_through_five_comparisons_in_chromium(evalrun):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium")
    import socket
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_rate_app(evalrun, seed=5), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
            for _ in range(100):
                try:
                    page.goto(url + "/")
                    break
                except playwright_api.Error:
                    import time

                    time.sleep(0.1)
            page.fill("#rater", "browser-rater")
            page.click("#start")
            buttons = ["#choose-left", "#choose-right", "#choose-tie", "#choose-left", "#choose-right"]
            for i, button in enumerate(buttons):
                page.wait_for_function("() => document.body.dataset.state === 'ready'", timeout=15_000)
                token = page.evaluate("() => document.body.dataset.token")
                assert page.evaluate("() => document.querySelector('#left-img').naturalWidth") == 32
                assert not any(m in page.content() for m in MODELS)
                page.click(button)
                page.wait_for_function(f"() => document.body.dataset.token !== '{token}' || "
                                       "document.body.dataset.state === 'done'", timeout=15_000)
            assert "5 of 6 done" in page.inner_text("#status")
            browser.close()
        assert outside == []
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    rows = RatingStore(evalrun / "ratings.sqlite").rows("comparisons")
    assert [r["choice"] for r in rows] == ["left", "right", "tie", "left", "right"]
    assert all(r["rater"] == "browser-rater" for r in rows)
    assert all(r["preferred"] == {"left": r["model_left"], "right": r["model_right"], "tie": None}[r["choice"]]
               for r in rows)


def test_the_main_server_serves_the_rating_page_at_rate(evalrun, tmp_path):
    from lightdiff.server.app import create_app
    from lightdiff.server.config import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path / "srv", eval_dir=str(evalrun)), start_workers=False)
    client = TestClient(app, base_url="http://127.0.0.1:7860")
    assert "text/html" in client.get("/rate/").headers["content-type"]
    task = client.post("/rate/api/next", json={"rater": "r9", "mode": "pair"}).json()
    assert client.get(f"/rate/api/image/{task['token']}/left").status_code == 200
    res = client.post("/rate/api/answer", json={"token": task["token"], "choice": "tie"})
    assert res.status_code == 200
    assert len(RatingStore(evalrun / "ratings.sqlite").comparisons()) == 1
