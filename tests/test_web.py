"""The web page and the HTML evaluation report in a real browser: the system's Chromium driven by
Playwright. Skips cleanly where Chromium, Playwright or the [http] extra is absent.

With IMGSIM_SCREENSHOTS=1 (`make screenshots`) the tests also save the README's screenshots
under results/.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import distinct_jpegs

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytest.importorskip(
    "imgsim_server.transport.http_server", reason="the [http] extra is not installed"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (apt-get install chromium chromium-driver)"
)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "results"


def _screenshot(page, name: str) -> None:
    if os.environ.get("IMGSIM_SCREENSHOTS"):
        jpeg = {"type": "jpeg", "quality": 70} if name.endswith(".jpg") else {}
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True, **jpeg)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 900})
    pg = context.new_page()
    pg.console_errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    yield pg
    context.close()


@pytest.fixture(scope="module")
def web(server):
    from imgsim_server.config import ServerConfig
    from imgsim_server.server import start_server

    running = start_server(ServerConfig(port=0, http_port=0), core=server.core)
    yield f"http://127.0.0.1:{running.http_port}"
    running.stop(0.5)


def _compare(page, a: Path, b: Path) -> None:
    page.set_input_files("#image-a", str(a))
    page.set_input_files("#image-b", str(b))
    page.click("#compare")
    page.wait_for_function(
        "document.querySelector('#score').textContent || document.querySelector('#error')"
        ".textContent"
    )


def test_page_scores_two_photos_like_grpc(web, page, client, photos, tmp_path):
    a, b = distinct_jpegs(photos, 2, salt=9600)
    (tmp_path / "a.jpg").write_bytes(a)
    (tmp_path / "b.jpg").write_bytes(b)
    page.goto(web + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    default = client.list_models().default_model
    assert page.input_value("#model") == default
    assert page.get_attribute("#image-a", "type") == "file"
    _compare(page, tmp_path / "a.jpg", tmp_path / "b.jpg")
    score, _, verdict = client.compare_pair(a, b)
    assert page.text_content("#error") == ""
    assert page.text_content("#score").startswith(f"{score:.4f}")
    assert page.text_content("#verdict") == verdict
    assert page.console_errors == []
    _screenshot(page, "web_page.png")


def test_corrupt_file_shows_an_error_and_the_page_recovers(web, page, photos, tmp_path):
    (good,) = distinct_jpegs(photos, 1, salt=9700)
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG")
    page.goto(web + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    _compare(page, tmp_path / "good.jpg", tmp_path / "bad.jpg")
    error = page.text_content("#error")
    assert "not a decodable image" in error or "corrupt" in error, error
    assert "400" in error and page.text_content("#score") == ""
    _compare(page, tmp_path / "good.jpg", tmp_path / "good.jpg")
    assert page.text_content("#error") == ""
    assert float(page.text_content("#score").split()[0]) > 0.999


def test_report_html_loads_every_image_without_errors(page, client, photos, tmp_path):
    """evaluate --out writes report.html; every gallery thumbnail and plot loads."""
    from imgsim_client.cli import main
    from imgsim_client.scoring import score_pairs

    names = sorted(photos)[:8]
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 : i + 4]:
            rows.append({"image_a": str(photos[a]), "image_b": str(photos[b]), "label": 0})
        rows.append({"image_a": str(photos[a]), "image_b": str(photos[a]), "label": 1})
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image_a", "image_b", "label"])
        w.writeheader()
        w.writerows(rows)
    scores = tmp_path / "scores.csv"
    score_pairs(client, pairs, scores, progress=False)
    out = tmp_path / "report"
    assert main(["evaluate", str(scores), "--out", str(out)]) == 0
    page.goto((out / "report.html").as_uri())
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth > 0])"
    )
    gallery = [src for src, _ in images if src.startswith("thumbs/")]
    assert len(gallery) >= 2 * 8 and all(ok for _, ok in images), images
    assert page.locator(".gallery").count() == 2
    assert page.console_errors == []
    _screenshot(page, "report_html.jpg")


def test_api_docs_render_offline(web, page):
    """/docs loads Swagger UI from the package, not a CDN (this machine has none)."""
    page.goto(web + "/docs")
    page.wait_for_selector('.opblock-summary-path[data-path="/v1/compare"]', timeout=15000)
    assert page.locator(".opblock").count() >= 3
    assert page.console_errors == []


def test_drag_and_drop_fills_the_file_input_and_the_preview(web, page, photos):
    import base64

    (img,) = distinct_jpegs(photos, 1, salt=9800)
    page.goto(web + "/")
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
            const zone = document.querySelector('.drop[data-for="image-b"]');
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""",
        [base64.b64encode(img).decode(), "dropped.jpg"],
    )
    assert page.evaluate("document.querySelector('#image-b').files[0].name") == "dropped.jpg"
    page.wait_for_function("document.querySelector('#preview-b').naturalWidth > 0")
    assert page.is_disabled("#compare")  # image A is still missing
    assert page.console_errors == []


def test_page_with_a_bearer_token(extra_servers, page, photos, tmp_path):
    """On a server with --auth-token the page says why it cannot list models, and works once
    the token is given."""
    running = extra_servers(http_port=0, auth_token="s3cret")
    (img,) = distinct_jpegs(photos, 1, salt=9900)
    (tmp_path / "a.jpg").write_bytes(img)
    page.goto(f"http://127.0.0.1:{running.http_port}/")
    # The token field opens by itself and says why (before: a bare error, the field closed).
    page.wait_for_function("document.querySelector('#token-why').textContent")
    assert page.evaluate("document.querySelector('#token-box').open")
    assert "requires a bearer token" in page.text_content("#token-why")
    page.fill("#token", "wrong")
    page.dispatch_event("#token", "change")
    page.wait_for_function("document.querySelector('#token-why').textContent.includes('refused')")
    page.fill("#token", "s3cret")
    page.dispatch_event("#token", "change")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.text_content("#error") == "" and page.text_content("#token-why") == ""
    _compare(page, tmp_path / "a.jpg", tmp_path / "a.jpg")
    assert float(page.text_content("#score").split()[0]) > 0.999


def test_page_fits_a_phone_and_groups_variants(web, browser, client):
    """At 375 px nothing scrolls sideways; variants are grouped under their base model."""
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    try:
        page.goto(web + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        groups = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#model optgroup')].map("
            "g => [g.label, [...g.querySelectorAll('option')].map(o => o.value)]))"
        )
        assert all(o == label or o.startswith(label + "-") for label, opts in groups.items()
                   for o in opts)  # fmt: skip
        assert "efficientnet-lite0-gem" in groups["efficientnet-lite0"]
        assert groups["phash"] == ["phash"]
        assert page.input_value("#model") == client.list_models().default_model
        _screenshot(page, "web_page_phone.png")
    finally:
        context.close()


def test_page_says_the_server_is_preparing_until_it_is_ready(server, page, photos, tmp_path):
    import asyncio

    from imgsim_server.config import ServerConfig
    from imgsim_server.server import start_server

    running = start_server(ServerConfig(port=0, http_port=0), core=server.core)
    a, b = distinct_jpegs(photos, 2, salt=9650)
    (tmp_path / "a.jpg").write_bytes(a)
    (tmp_path / "b.jpg").write_bytes(b)
    try:
        asyncio.run_coroutine_threadsafe(running.aio.set_serving(False), running.loop).result()
        page.goto(f"http://127.0.0.1:{running.http_port}/")
        page.wait_for_selector("#preparing", state="visible")
        assert "still preparing its model" in page.text_content("#preparing")
        page.set_input_files("#image-a", str(tmp_path / "a.jpg"))
        page.set_input_files("#image-b", str(tmp_path / "b.jpg"))
        assert page.is_disabled("#compare")  # no compare that would only wait or fail
        asyncio.run_coroutine_threadsafe(running.aio.set_serving(True), running.loop).result()
        page.wait_for_selector("#preparing", state="hidden", timeout=5000)
        assert page.is_enabled("#compare")
        _compare(page, tmp_path / "a.jpg", tmp_path / "b.jpg")
        assert page.text_content("#error") == "" and page.text_content("#score")
    finally:
        running.stop(0.5)


def test_page_draws_the_matched_faces_with_the_face_model(web, page):
    pytest.importorskip("dlib", reason="the [faces] extra is not installed")
    orl = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces"
    if not orl.is_dir():
        pytest.skip(f"no ORL faces at {orl}")
    page.goto(web + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.select_option("#model", "face")
    _compare(page, orl / "s6" / "1.png", orl / "s6" / "2.png")
    assert page.text_content("#error") == ""
    assert page.text_content("#verdict") == "same person"
    for side in ("a", "b"):
        box = page.locator(f"#face-{side}").bounding_box()
        img = page.locator(f"#preview-{side}").bounding_box()
        assert box is not None and 0 < box["width"] < img["width"]  # drawn, inside the photo
        assert img["x"] <= box["x"] and box["x"] + box["width"] <= img["x"] + img["width"] + 1
    page.set_input_files("#image-a", str(orl / "s7" / "1.png"))  # a new photo: no stale box
    assert page.locator("#face-a").is_hidden()
    assert page.console_errors == []
