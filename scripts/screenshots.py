"""The README's screenshots of the web page: each view at 1280 and 360 px wide, in docs/screenshots/.

A fresh library of the test photos (scikit-image's and the interior photos), with two smaller copies and
one exact copy for the duplicates page; the service (`lookalike serve`) on it, and Debian's Chromium
driven by Playwright.

Run: .venv/bin/python scripts/screenshots.py   (after `make test` has fetched the photos)
"""

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
PHOTOS = Path(os.environ.get("LOOKALIKE_TEST_PHOTOS", Path.home() / ".cache/lookalike/photos"))
BROWSER = os.environ.get("LOOKALIKE_TEST_BROWSER", "/usr/bin/chromium")
WIDTHS = {1280: 900, 360: 780}
SHOT = {"type": "jpeg", "quality": 80}  # a tenth of a PNG's bytes, and nothing lost to the eye


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def library_photos() -> dict[str, bytes]:
    import skimage.data

    found = {
        f"{name}.jpg": jpeg(Image.fromarray(getattr(skimage.data, name)()))
        for name in ("astronaut", "chelsea", "coffee", "rocket")
    }
    for path in sorted((PHOTOS / "interior").glob("*.jpg"))[:24]:
        found[f"interior/{path.name}"] = path.read_bytes()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    from playwright.sync_api import sync_playwright

    photos = library_photos()
    names = list(photos)
    copies = {
        "chelsea (small copy).jpg": jpeg(
            ImageOps.contain(Image.open(io.BytesIO(photos["chelsea.jpg"])), (300, 300)), 75
        ),
        "from the phone.jpg": jpeg(ImageOps.contain(Image.open(io.BytesIO(photos[names[6]])), (800, 800)), 80),
        "copy of coffee.jpg": photos["coffee.jpg"],
    }
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        env = os.environ | {"LOOKALIKE_DATA_DIR": data_dir}
        service = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--port", str(port)], env=env)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600, trust_env=False)
        try:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            for image_id, (name, data) in enumerate({**photos, **copies}.items()):
                form = {"image_id": str(image_id), "file_name": name}
                client.post("/images", files={"image": (name, data)}, data=form).raise_for_status()
            OUT.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=BROWSER, args=["--no-sandbox", "--disable-gpu"])
                for width, height in WIDTHS.items():
                    page = browser.new_page(viewport={"width": width, "height": height})
                    page.goto(f"http://127.0.0.1:{port}/#search")
                    query = jpeg(ImageOps.contain(Image.open(io.BytesIO(photos["chelsea.jpg"])), (400, 400)), 70)
                    page.set_input_files(
                        "#file", files=[{"name": "cat.jpg", "mimeType": "image/jpeg", "buffer": query}]
                    )
                    page.wait_for_selector("#results[data-state=done]")
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=OUT / f"search-{width}.jpg", **SHOT)
                    page.goto(f"http://127.0.0.1:{port}/#duplicates")
                    page.wait_for_selector("[data-group] img")
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=OUT / f"duplicates-{width}.jpg", **SHOT)
                    page.goto(f"http://127.0.0.1:{port}/#library")
                    page.wait_for_selector("#stat-engines tbody tr")
                    page.screenshot(path=OUT / f"library-{width}.jpg", **SHOT)
                    page.close()
                browser.close()
        finally:
            client.close()
            service.terminate()
            service.wait()
    for path in sorted(OUT.glob("*.jpg")):
        print(path.relative_to(ROOT), path.stat().st_size)


if __name__ == "__main__":
    main()
