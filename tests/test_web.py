"""The web page (src/lookalike/web/static) in a real browser: Chromium, driven by Playwright, against the
service on a free loopback port, over real photos. Each result the page shows is checked against the
API's own answer for the same query."""

import contextlib
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest

# `make browser` installs Debian's Chromium; `make test` names it in LOOKALIKE_TEST_BROWSER, and then
# these tests must run: a browser named and missing is a failure, not a skip.
NAMED = os.environ.get("LOOKALIKE_TEST_BROWSER")
CHROMIUM = Path(NAMED or "/usr/bin/chromium")
if not CHROMIUM.exists():
    if NAMED:
        raise RuntimeError(f"LOOKALIKE_TEST_BROWSER names {NAMED!r}, which does not exist")
    pytest.skip(f"the web page tests drive Chromium, and {CHROMIUM} is missing", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the web page tests need Playwright")

import uvicorn  # noqa: E402
from helpers import TEXT_QUERIES  # noqa: E402
from photos import encode  # noqa: E402
from words_in_photos import WORDS, with_its_word  # noqa: E402

from lookalike.config import Settings  # noqa: E402
from lookalike.service import create_app  # noqa: E402

ENGINES = ["phash", "color", "local", "global", "image_text", "tags", "text"]
# The gallery: id -> photo. Coffee carries its word (WORDS), for the text engine to read.
GALLERY = {1: "coffee", 2: "chelsea", 3: "astronaut", 4: "rocket", 5: "pexels-2416933"}
BADGES = {"image_text": "image text", "tags": "tags", "text": "OCR words", "captions": "caption",
          "caption_embedding": "caption meaning"}  # fmt: skip
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--no-proxy-server"]  # fmt: skip


def gallery_photo(photos, name: str):
    return with_its_word(photos[name], name) if name in WORDS else photos[name]


@contextlib.contextmanager
def serving(settings: Settings, headers: dict | None = None):
    """(base URL, an HTTP client of it) for a service in a thread on a free loopback port."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # the models load before the first request
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.1)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    try:
        with httpx.Client(base_url=url, trust_env=False, timeout=120, headers=headers) as client:
            yield url, client
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def service(tmp_path_factory, photos):
    """The service over the gallery."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("web") / "data", engines=ENGINES)
    with serving(settings) as (url, client):
        for image_id, name in GALLERY.items():
            add(client, image_id, f"/photos/{name}.jpg", encode(gallery_photo(photos, name)))
        yield url, client


def add(client, image_id: int, file_name: str, data: bytes) -> None:
    response = client.post("images", files={"image": ("photo.jpg", data, "image/jpeg")},
                           data={"image_id": str(image_id), "file_name": file_name})  # fmt: skip
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service):
    """A fresh page, 1280 px wide, on the service; every request it makes must stay on the host."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested, failures = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: failures.append(str(error)))
    # The service's Content-Security-Policy would block anything inline or from elsewhere.
    page.on("console", lambda message: "Content Security Policy" in message.text and failures.append(message.text))
    page.requested = requested
    page.goto(service[0])
    yield page
    context.close()
    assert not failures, failures
    assert not [url for url in requested if not on_the_host(url)]


def on_the_host(url: str) -> bool:
    """Loopback, or a URL with no network behind it (data:, and blob: of the page's own origin)."""
    parts = urlsplit(url)
    if parts.scheme == "data":
        return True
    if parts.scheme == "blob":
        parts = urlsplit(url.removeprefix("blob:"))
    return parts.scheme == "http" and parts.hostname == "127.0.0.1"


def open_view(page, url: str, view: str) -> None:
    """Switch to `view` and wait until its answers are painted (again, if it was shown before)."""
    page.evaluate("document.getElementById('groups').dataset.state = 'stale';"
                  "document.getElementById('updated').textContent = ''")  # fmt: skip
    page.goto(f"{url}#{view}")
    if view == "duplicates":
        page.wait_for_selector("#groups[data-state=done]", state="attached")
    elif view == "library":
        page.wait_for_selector("#updated:not(:empty)")


def searched(page, start) -> None:
    """Run `start` (which starts a search) and wait until its results are painted."""
    page.eval_on_selector("#results", "results => { results.dataset.state = 'stale'; }")
    start()
    page.wait_for_selector("#results[data-state=done]", timeout=60_000)


def shown(page) -> list[tuple[int, str | None]]:
    """(image id, verdict or None) of each card, in order."""
    return [
        tuple(card)
        for card in page.eval_on_selector_all(
            "#results .card",
            "cards => cards.map(card => [Number(card.dataset.imageId),"
            " card.querySelector('[data-verdict]')?.dataset.verdict ?? null])",
        )
    ]


def resized_jpeg(image, long_side: int = 400) -> bytes:
    copy = image.copy()
    copy.thumbnail((long_side, long_side))
    return encode(copy, quality=80)


def test_a_photo_finds_its_original_with_the_apis_verdict(page, service, photos):
    _, client = service
    original = encode(gallery_photo(photos, "coffee"))
    for data, verdicts in [(resized_jpeg(gallery_photo(photos, "coffee")), {"near_duplicate", "copy"}),
                           (original, {"exact"})]:  # fmt: skip
        answer = client.post("search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "20"}).json()
        first = answer["hits"][0]
        assert first["image_id"] == 1 and first["verdict"] in verdicts, answer
        upload = {"name": "q.jpg", "mimeType": "image/jpeg", "buffer": data}
        searched(page, lambda: page.set_input_files("#file", upload))  # noqa: B023 (called at once)
        assert shown(page)[0] == (1, first["verdict"])
        assert [image_id for image_id, _ in shown(page)] == [hit["image_id"] for hit in answer["hits"]]
        assert page.is_visible("#preview")
        assert page.text_content("#headline").startswith("Already in your library")
    # A card's thumbnail searches by that stored photo.
    similar = client.get("images/2/similar", params={"k": 20}).json()
    searched(page, lambda: page.click('#results .card[data-image-id="2"] .thumb'))
    assert [image_id for image_id, _ in shown(page)] == [hit["image_id"] for hit in similar["hits"]]


def test_a_text_finds_the_photo_it_describes(page, service):
    _, client = service
    text = TEXT_QUERIES["text"][0]  # "espresso": coffee's tag, and the word written on it
    answer = client.post("search_text", json={"text": text, "k": 20}).json()
    first = answer["hits"][0]["image_id"]
    assert first == 1, answer
    searched(page, lambda: (page.fill("#text", text), page.press("#text", "Enter")))
    card = page.locator(f'#results .card[data-image-id="{first}"]')
    assert shown(page)[0][0] == first
    lists = answer["found"].items()
    expected = {BADGES[engine] for engine, found in lists if any(f["image_id"] == first for f in found)}
    assert "OCR words" in expected
    assert set(card.locator(".badge b").all_text_contents()) == expected
    # The words the text engine read in the photo, the query's word marked.
    assert [word.lower() for word in card.locator(".ocr mark").all_text_contents()] == [text]
    # A badge shows its score on keyboard focus (a tooltip from data-tip).
    card.locator(".badge").first.focus()
    assert "rank" in card.locator(".badge").first.get_attribute("data-tip")


def test_deleting_the_others_of_a_duplicate_group(page, service, photos):
    url, client = service
    cat = encode(photos["chelsea"])
    add(client, 10, "/photos/cat.jpg", cat)
    add(client, 11, "/photos/copies/cat.jpg", cat)
    open_view(page, url, "duplicates")
    group = page.locator('[data-group]:has([data-image-id="10"])')
    group.wait_for()
    assert group.locator("[data-verdict]").get_attribute("data-verdict") == "exact"
    assert group.locator('[data-image-id="10"] input[type=radio]').is_checked()  # the first is kept
    group.get_by_role("button", name="Delete the others").click()
    dialog = page.locator("#confirm")
    assert "/photos/copies/cat.jpg" in dialog.text_content()
    dialog.get_by_role("button", name="Delete 1 photo").click()
    page.wait_for_selector('[data-image-id="11"]', state="detached")
    assert client.get("images/11").status_code == 404
    assert client.get("images/10").status_code == 200
    assert page.locator('[data-image-id="10"]').count() == 0  # its group is gone with its copy
    assert "Deleted 1 photo" in page.text_content("#status")


def test_no_request_leaves_the_host(page, service):
    """Every view, and a search with thumbnails, asks only the service (the page fixture checks too)."""
    url, _ = service
    searched(page, lambda: (page.fill("#text", "a cat"), page.press("#text", "Enter")))
    for view in ["duplicates", "library"]:
        open_view(page, url, view)
    hosts = {urlsplit(request).hostname for request in page.requested}
    assert any(request.endswith("/thumbnail") for request in page.requested)
    assert hosts <= {"127.0.0.1", None}, hosts  # None: data: and blob: URLs
    assert all(on_the_host(request) for request in page.requested)


def focus_by_tab(page, wanted: str, presses: int = 10) -> None:
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement.matches({wanted!r})"):
            # The focus ring is visible.
            assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
            return
    raise AssertionError(f"{wanted} not reached by {presses} Tabs")


def test_the_keyboard_alone_searches_and_a_phone_needs_no_sideways_scroll(page, service):
    url, _ = service
    focus_by_tab(page, "#file")  # the file picker is reachable too
    focus_by_tab(page, "#text")
    page.keyboard.type("espresso")
    focus_by_tab(page, "#text-form button[type=submit]", presses=1)
    searched(page, lambda: page.keyboard.press("Enter"))
    assert shown(page)[0][0] == 1
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "text"
    searched(page, lambda: page.keyboard.press("Enter"))
    page.set_viewport_size({"width": 360, "height": 800})
    for view in ["search", "duplicates", "library"]:
        open_view(page, url, view)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, view


def test_the_library_shows_the_service_counts(page, service):
    url, client = service
    stats = client.get("stats").json()
    open_view(page, url, "library")
    page.wait_for_function(f"document.getElementById('stat-images').textContent === '{stats['images']:,}'")
    assert page.locator("#stat-engines tbody tr").count() == len(stats["engines"])
    assert page.text_content("#stat-jobs") == "Idle" or "left" in page.text_content("#stat-jobs")


def test_a_service_that_needs_its_key_for_reads_asks_for_it_once_and_shows_thumbnails(browser, photos, tmp_path):
    """Beyond loopback with a key, every read needs it: the page asks, then sends it, thumbnails too
    (an <img> cannot send a header: they are fetched)."""
    key = "a-key-of-sixteen-or-more"
    settings = Settings(data_dir=tmp_path / "data", engines=["phash", "color"], host="0.0.0.0", api_key=key)
    with serving(settings, headers={"X-API-Key": key}) as (url, client):
        add(client, 1, "/photos/chelsea.jpg", encode(photos["chelsea"]))
        assert client.get("images/1/thumbnail", headers={"X-API-Key": ""}).status_code == 401
        page = browser.new_page()
        page.goto(url)
        upload = {"name": "q.jpg", "mimeType": "image/jpeg", "buffer": resized_jpeg(photos["chelsea"])}
        page.set_input_files("#file", upload)
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key", key)
        page.press("#key", "Enter")
        page.wait_for_selector("#results[data-state=done]")
        assert shown(page)[0] == (1, "near_duplicate")
        page.wait_for_function("document.querySelector('#results .card img')?.naturalWidth > 0")
        assert page.eval_on_selector("#results .card img", "img => img.naturalWidth") == 256
        page.close()
