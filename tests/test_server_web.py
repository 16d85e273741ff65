"""The web UI in a real headless Chromium: submit a tiny-twin job, watch its progress, see the image,
cancel a queued job from the queue page.

Needs Debian's chromium and the playwright package (no browser download):
    apt-get update && apt-get install -y chromium
    pip install playwright
"""

import shutil
import time

import pytest

from lightdiff.server.testing import ServerProcess, wait_finished

CHROMIUM = "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install`)")
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


TOKEN = "web-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # With a token, as when bound beyond loopback: the page takes it from the URL fragment
    # `lightdiff serve` prints, and sends it with every API call, the event stream and images.
    srv = ServerProcess(tmp_path_factory.mktemp("web") / "data", args=["--token", TOKEN])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server.url, "data:", "blob:")) else None)
        page.goto(f"{server.url}/#token={TOKEN}")
        page.wait_for_selector("#model option[value='tiny-sd15']", state="attached")
        assert page.is_hidden("#auth")  # the token was taken: no 401, no token prompt
        yield page
        assert outside == []  # no CDN, no internet: every asset is the server's own
        browser.close()


def test_generate_shows_progress_and_the_image(page):
    page.select_option("#model", "tiny-sd15")
    page.select_option("#workflow", "txt2img")
    page.fill("#prompt", "a red circle")
    for name, value in (("steps", "2"), ("width", "64"), ("height", "64"), ("seed", "3")):
        page.fill(f"#param-fields [name='{name}']", value)
    page.click("#generate")
    img = page.wait_for_selector("#gen-images img", timeout=90_000)
    page.wait_for_function("() => document.querySelector('#gen-images img').naturalWidth === 64", timeout=30_000)
    assert page.inner_text("#gen-status") == "done"
    events = page.inner_text("#gen-events")
    assert "queued" in events and "running: step 1 of 2" in events and "running: step 2 of 2" in events
    assert page.eval_on_selector("#gen-progress", "p => p.value") == 1
    assert '"seed": 3' in page.inner_text("#gen-params") or '"seed": 3' in page.text_content("#gen-params")
    assert img.get_attribute("src").startswith("blob:")


def test_cancel_a_queued_job_from_the_queue_page(page, server):
    with server.client() as c:
        busy = c.post("/api/jobs", json={"model": "tiny-sd15", "prompt": "busy", "steps": 400, "width": 64,
                                         "height": 64}).json()
        queued = c.post("/api/jobs", json={"model": "tiny-sd15", "prompt": "to cancel", "steps": 2, "width": 64,
                                           "height": 64}).json()
        page.click("nav button[data-tab='queue']")
        row = f"#queue-table tr[data-job='{queued['id']}']"
        page.wait_for_selector(f"{row}[data-status='queued'] button.cancel", timeout=30_000)
        page.click(f"{row} button.cancel")
        page.wait_for_selector(f"{row}[data-status='cancelled']", timeout=30_000)
        assert c.get(f"/api/jobs/{queued['id']}").json()["status"] == "cancelled"
        assert c.get(f"/api/jobs/{busy['id']}").json()["status"] in ("queued", "loading", "running")
        # the busy job is cancelled too (from its row), and retried from the UI as a new job
        bus_row = f"#queue-table tr[data-job='{busy['id']}']"
        page.click(f"{bus_row} button.cancel")
        assert wait_finished(c, [busy["id"]])[busy["id"]]["status"] == "cancelled"
        page.wait_for_selector(f"{row} button.retry", timeout=30_000)
        page.click(f"{row} button.retry")
        deadline = time.monotonic() + 30
        while not [j for j in c.get("/api/jobs").json()["jobs"] if j["retry_of"] == queued["id"]]:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_gallery_and_compare(page):
    page.click("nav button[data-tab='compare']")
    page.fill("#cmp-prompt", "a blue square")
    page.fill("#cmp-steps", "2")
    page.fill("#cmp-width", "64")
    page.fill("#cmp-height", "64")
    for box in page.query_selector_all("#cmp-models input"):
        box.set_checked(box.get_attribute("value") in ("tiny-sd15", "tiny-qwen-image"))
    page.click("#compare")
    for model in ("tiny-sd15", "tiny-qwen-image"):
        page.wait_for_selector(f".col[data-model='{model}'] img", timeout=120_000)
    page.click("nav button[data-tab='gallery']")
    page.wait_for_selector("#gallery img", timeout=30_000)
    page.click("#gallery img")
    page.wait_for_function("() => document.querySelector('#gallery-meta').textContent.includes('job_id')", timeout=30_000)
