"""The web page at 10,000 images: time from dropping a photo to its results painted, page weight, and
thumbnail storage per image.

Library: every default engine; the test photos and the real photographs of mvtb-data (about 120),
each extracted and thumbnailed once as `Library.add` does, then stored again under new ids until SIZE
images (features and thumbnails repeated: the store and indexes hold SIZE images; the local index
trained as `maintain` does). Cached under bench/results/cache/web_page/.

The service (`lookalike serve`) runs on that library; headless Chromium (Debian's, driven by
Playwright) opens `/`. Each of TRIES queries, a different photo resized to 70% and saved as JPEG
quality 80, is dropped on the page as a browser drop event carrying the file; timed in the page from
the drop to the result grid complete, every thumbnail in it decoded, and two animation frames later
(painted), and when the page's `POST /search` was answered (its resource timing). In the same run,
each query is also asked of `POST /search` directly (httpx, k=20, what the page asks), the page and
httpx taking turns at going first: the page's own cost is the difference.

Page weight: the bytes of every request of a fresh load of `/` (HTML, CSS, scripts), before any
thumbnail. Thumbnail storage: the WebP bytes per distinct photo, and the store's bytes per image.

Duplicates page at GROUPS groups: a second library of phash and color only, GROUPS pairs of images
(a random 576-bit hash and the same hash with 3 bits flipped, a random histogram each; the real
photos' thumbnails in turn); the time from opening `#duplicates` to its first page painted with
the thumbnails of its first screen, and `GET /duplicates` alone: the first request (which makes the
groups) and then the first and the last page (TRIES each, p50: the groups as made).

Run: .venv/bin/python bench/web_page.py --size 10000 --groups 10000
"""

import argparse
import base64
import io
import os
import random
import statistics
import time
from pathlib import Path

import common
import httpx2 as httpx
import numpy as np
from background_pass import Service
from PIL import Image

from lookalike.config import Settings
from lookalike.library import Library
from lookalike.store import ImageRecord
from lookalike.thumbnails import THUMBNAIL, make_thumbnail

TRIES = 20
FOLDER = common.CACHE_DIR / "web_page"
BROWSER = os.environ.get("LOOKALIKE_TEST_BROWSER", "/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

# Drops `file` on the page's drop zone as a user would (a DataTransfer on a drop event); resolves with
# the milliseconds until the grid is done, its first screen's thumbnails decoded (those below load
# lazily, as they are scrolled to) and two frames painted.
DROP_AND_WAIT = """async ([b64, name]) => {
  const onScreen = img => img.getBoundingClientRect().top < innerHeight;
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const file = new File([bytes], name, {type: "image/jpeg"});
  const transfer = new DataTransfer();
  transfer.items.add(file);
  const results = document.getElementById("results");
  const drop = document.getElementById("drop");
  const started = performance.now();
  for (const type of ["dragenter", "dragover", "drop"])
    drop.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
  while (results.dataset.state !== "done") {
    if (results.dataset.state === "error") throw new Error(document.getElementById("status").textContent);
    await new Promise(r => setTimeout(r, 2));
  }
  await Promise.all([...results.querySelectorAll("img")].filter(onScreen).map(img => img.decode().catch(() => null)));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const painted = performance.now() - started;
  const asked = performance.getEntriesByType("resource").filter(e => e.name.endsWith("/search")).pop();
  performance.clearResourceTimings();
  return [painted, results.querySelectorAll("[data-image-id]").length, asked.responseEnd - started];
}"""


def photos() -> dict[str, bytes]:
    found = {**common.test_photos(), **common.mvtb_photos()}
    return {name: common.jpeg(image) for name, image in found.items()}


def build(folder: Path, size: int, originals: dict[str, bytes]) -> tuple[list[int], list[bytes]]:
    """The library of `size` images in `folder` (made once); the WebP bytes of each distinct thumbnail,
    and each as stored."""
    with Library.from_settings(Settings(data_dir=folder)) as library:
        made = []
        for name, data in originals.items():
            images = library.decode(data, list(library.engines), thumbnail=True)
            thumbnail = make_thumbnail(data, images.pop(THUMBNAIL))
            made.append((thumbnail, {n: library.engines[n].extract(images[n]) for n in library.engines}))
        if library.store.count() < size:
            batch = []
            for image_id in range(size):
                thumbnail, features = made[image_id % len(made)]
                record = ImageRecord(image_id, f"photo-{image_id:05d}.jpg", thumbnail=thumbnail.to_bytes())
                batch.append((record, features))
                if len(batch) == 500:
                    library.add_many(batch)
                    batch = []
            library.add_many(batch)
            library.maintain()
        return [len(thumbnail.webp) for thumbnail, _ in made], [thumbnail.to_bytes() for thumbnail, _ in made]


def queries(originals: dict[str, bytes]) -> list[tuple[str, bytes]]:
    chosen = random.Random(common.SEED).sample(sorted(originals), TRIES)
    found = []
    for name in chosen:
        image = Image.open(io.BytesIO(originals[name])).convert("RGB")
        image = image.resize((image.width * 7 // 10, image.height * 7 // 10), Image.Resampling.BICUBIC)
        found.append((name, common.jpeg(image, 80)))
    return found


def page_weight(browser, url: str) -> dict[str, int]:
    """The bytes of each request of a fresh load of the page, by path, before any thumbnail."""
    context = browser.new_context()
    page = context.new_page()
    sizes = {}
    page.on("requestfinished", lambda request: sizes.__setitem__(request.url, request.sizes()["responseBodySize"]))
    page.goto(url)
    page.wait_for_load_state("networkidle")
    context.close()
    return {url_path(u): n for u, n in sizes.items()}


OPEN_DUPLICATES = """async () => {
  const onScreen = img => img.getBoundingClientRect().top < innerHeight;
  const groups = document.getElementById("groups");
  groups.dataset.state = "stale";
  const started = performance.now();
  location.hash = "#duplicates";
  while (groups.dataset.state !== "done") await new Promise(r => setTimeout(r, 2));
  await Promise.all([...groups.querySelectorAll("img")].filter(onScreen).map(img => img.decode().catch(() => null)));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  location.hash = "#search";
  return [performance.now() - started, groups.querySelectorAll("[data-group]").length];
}"""


def build_pairs(folder: Path, groups: int, thumbnails: list[bytes]) -> None:
    """GROUPS near-duplicate pairs in a phash and color library (made once)."""
    with Library.from_settings(Settings(data_dir=folder, engines=["phash", "color"])) as library:
        if library.store.count() >= 2 * groups:
            return
        rng = np.random.default_rng(common.SEED)
        batch = []
        for pair in range(groups):
            bits = rng.integers(0, 2, 576, dtype=np.uint8)
            for copy in range(2):
                if copy:
                    bits[rng.choice(576, 3, replace=False)] ^= 1
                colour = rng.random(512, dtype=np.float32)
                features = {"phash": np.packbits(bits), "color": colour / colour.sum()}
                image_id = 2 * pair + copy
                thumbnail = thumbnails[image_id % len(thumbnails)]
                batch.append((ImageRecord(image_id, f"pair-{pair:05d}/{copy}.jpg", thumbnail=thumbnail), features))
            if len(batch) >= 1000:
                library.add_many(batch)
                batch = []
        library.add_many(batch)


def duplicates_page(folder: Path, groups: int, thumbnails: list[bytes]) -> dict:
    from playwright.sync_api import sync_playwright

    build_pairs(folder, groups, thumbnails)
    service = Service(folder, dict(os.environ) | {"LOOKALIKE_ENGINES": '["phash", "color"]'})
    try:
        service.wait_until_up()
        before = time.perf_counter()  # the first asks for the groups to be made; the others find them made
        total = service.client.get("/duplicates", params={"limit": 1}).json()["total"]
        cold_ms = (time.perf_counter() - before) * 1000
        api_ms = {"first": [], "last": []}
        for _ in range(TRIES):
            for which, offset in [("first", 0), ("last", total - 20)]:
                before = time.perf_counter()
                service.client.get("/duplicates", params={"offset": offset, "limit": 20}).raise_for_status()
                api_ms[which].append((time.perf_counter() - before) * 1000)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=BROWSER, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{service.port}/")
            opened = [page.evaluate(OPEN_DUPLICATES) for _ in range(TRIES + 1)][1:]  # one warm-up
            browser.close()
    finally:
        service.close()
    return {
        "groups": total,
        "page_painted_ms_p50": statistics.median(ms for ms, _ in opened),
        "groups_shown": opened[0][1],
        "api_groups_made_ms": cold_ms,
        "api_first_page_ms_p50": statistics.median(api_ms["first"]),
        "api_last_page_ms_p50": statistics.median(api_ms["last"]),
    }


def url_path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=10_000)
    args = parser.parse_args()
    originals = photos()
    folder = FOLDER / f"library-{args.size}"
    started = time.monotonic()
    thumbnail_bytes, thumbnails = build(folder, args.size, originals)
    print(f"library of {args.size} images ready in {time.monotonic() - started:.0f} s")
    with Library.from_settings(Settings(data_dir=folder)) as library:
        store_bytes = library.store.disk_bytes()
    service = Service(folder, dict(os.environ))
    try:
        service.wait_until_up()
        url = f"http://127.0.0.1:{service.port}/"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=BROWSER, args=BROWSER_ARGS)
            weight = page_weight(browser, url)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page_ms, answered_ms, api_ms, shown = [], [], [], []
            tries = [queries(originals)[0], *queries(originals)]  # the first twice: a warm-up
            for attempt, (name, data) in enumerate(tries):
                # The page and the API alone take turns at going first.
                for asker in ("page", "api") if attempt % 2 else ("api", "page"):
                    if asker == "page":
                        answer = page.evaluate(DROP_AND_WAIT, [base64.b64encode(data).decode(), f"{name}.jpg"])
                        page_ms.append(answer[0])
                        shown.append(answer[1])
                        answered_ms.append(answer[2])
                    else:
                        before = time.perf_counter()
                        files = {"image": ("q.jpg", data)}
                        service.client.post("/search", files=files, data={"k": "20"}).raise_for_status()
                        api_ms.append((time.perf_counter() - before) * 1000)
            browser.close()
    except httpx.HTTPError as exc:
        raise SystemExit(f"the service failed: {exc}") from exc
    finally:
        service.close()
    page_ms, answered_ms, api_ms = page_ms[1:], answered_ms[1:], api_ms[1:]
    duplicates = duplicates_page(FOLDER / f"pairs-{args.groups}", args.groups, thumbnails)
    result = {
        "machine": common.machine(),
        "size": args.size,
        "tries": TRIES,
        "drop_to_painted_ms": {"p50": statistics.median(page_ms), "p90": common.percentile(page_ms, 90)},
        "page_search_answered_ms": {"p50": statistics.median(answered_ms), "p90": common.percentile(answered_ms, 90)},
        "api_search_ms": {"p50": statistics.median(api_ms), "p90": common.percentile(api_ms, 90)},
        "results_shown": statistics.median(shown),
        "page_bytes": weight,
        "page_bytes_total": sum(weight.values()),
        "thumbnail_webp_bytes": {
            "mean": statistics.mean(thumbnail_bytes),
            "median": statistics.median(thumbnail_bytes),
            "max": max(thumbnail_bytes),
            "photos": len(thumbnail_bytes),
        },
        "store_bytes_per_image": store_bytes / args.size,
        "duplicates": duplicates,
    }
    print(common.save_json(f"web_page-{args.size}", result))
    rows = [
        [what, f"{result[key]['p50']:.0f}", f"{result[key]['p90']:.0f}"]
        for what, key in [
            ("drop to results painted (page)", "drop_to_painted_ms"),
            ("drop to the page's POST /search answered", "page_search_answered_ms"),
            ("POST /search alone (httpx)", "api_search_ms"),
        ]
    ]
    print(common.table(["at " + f"{args.size:,} images", "p50 ms", "p90 ms"], rows))
    print(f"page weight: {result['page_bytes_total']:,} bytes {weight}")
    print(f"thumbnails: {result['thumbnail_webp_bytes']}; store {result['store_bytes_per_image']:,.0f} bytes per image")
    print(f"duplicates page: {duplicates}")


if __name__ == "__main__":
    main()
