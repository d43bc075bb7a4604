"""Thumbnails and what the web page reads of each image: made at add time from the engines' decode,
stored and deleted with the image's record, served with caching headers; made for images stored before
thumbnails were, by the next `lookalike index` or on first request. And the fused search by a stored
image, which a click on a result asks."""

import hashlib
import io
import os

import numpy as np
import pytest
from conftest import LOCAL_URL
from fastapi.testclient import TestClient
from helpers import error, ok
from photos import encode
from PIL import Image, ImageOps

from lookalike import indexer
from lookalike.config import Settings
from lookalike.library import Library
from lookalike.service import create_app
from lookalike.store import ImageRecord
from lookalike.thumbnails import SIDE

ENGINES = ["phash", "color"]


@pytest.fixture
def service(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", engines=ENGINES)
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        yield client


def add(client, image_id: int, data: bytes, name: str = "") -> None:
    form = {"image_id": str(image_id)} | ({"file_name": name} if name else {})
    ok(client.post("/images", files={"image": ("photo", data)}, data=form), 201)


def thumbnail_of(client, image_id: int) -> Image.Image:
    response = client.get(f"/images/{image_id}/thumbnail")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    return Image.open(io.BytesIO(response.content))


def turned_jpeg(photo: Image.Image) -> bytes:
    """`photo` stored lying on its side, with the EXIF orientation (6) that stands it up."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    photo.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_an_added_photo_has_an_upright_webp_thumbnail_and_the_original_size(service, photos):
    photo = photos["rocket"]  # 427 x 640, upright
    data = turned_jpeg(photo)
    add(service, 1, data, "rocket.jpg")
    thumbnail = thumbnail_of(service, 1)
    assert thumbnail.format == "WEBP"
    expected = photo.convert("RGB").copy()
    expected.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
    assert thumbnail.size == expected.size and max(thumbnail.size) == SIDE
    difference = np.abs(np.asarray(thumbnail.convert("RGB"), float) - np.asarray(expected, float)).mean()
    assert difference < 6, difference  # the same pixels, upright, but for JPEG and WebP losses
    info = ok(service.get("/images/1"))
    assert info == {
        "image_id": 1,
        "file_name": "rocket.jpg",
        "width": photo.width,
        "height": photo.height,
        "bytes": len(data),
        "engines": ENGINES,
        "pending": [],
    }


def test_a_photo_smaller_than_a_thumbnail_keeps_its_size(service, photos):
    small = ImageOps.contain(photos["coffee"], (120, 90))
    add(service, 2, encode(small, "PNG"))
    assert thumbnail_of(service, 2).size == small.size


def test_a_thumbnail_is_cached_by_its_etag_and_changes_with_the_photo(service, photos):
    add(service, 1, encode(photos["chelsea"]))
    first = service.get("/images/1/thumbnail")
    tag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    again = service.get("/images/1/thumbnail", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    ok(service.delete("/images/1"))
    assert "not in the library" in error(service.get("/images/1/thumbnail"), 404)
    assert "not in the library" in error(service.get("/images/1"), 404)
    add(service, 1, encode(photos["coffee"]))  # the same id, another photo
    replaced = service.get("/images/1/thumbnail", headers={"If-None-Match": tag})
    assert replaced.status_code == 200 and replaced.headers["etag"] != tag


def test_a_refused_add_leaves_the_thumbnails_as_they_were(service, photos):
    add(service, 1, encode(photos["chelsea"]), "cat.jpg")
    before = service.get("/images/1/thumbnail").content
    refused = service.post(
        "/images", files={"image": ("photo", encode(photos["coffee"]))}, data={"image_id": "2", "file_name": "cat.jpg"}
    )
    assert refused.status_code == 409
    assert service.get("/images/1/thumbnail").content == before
    assert service.get("/images/2/thumbnail").status_code == 404


def gallery_of(tmp_path, photos, names=("astronaut", "chelsea", "coffee")):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in names:
        (gallery / f"{name}.jpg").write_bytes(encode(photos[name]))
    return gallery


def without_thumbnails(library: Library, gallery) -> None:
    """Store the gallery's files as a version that made no thumbnails did: records and features only."""
    items = []
    for image_id, path in enumerate(sorted(gallery.iterdir())):
        data, stat = path.read_bytes(), path.stat()
        record = ImageRecord(image_id, str(path), stat.st_size, stat.st_mtime_ns, _digest(data))
        items.append((record, library.extract(data)))
    library.add_many(items)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_index_makes_thumbnails_and_gives_older_images_theirs_without_remaking_features(tmp_path, photos):
    gallery = gallery_of(tmp_path, photos)
    with Library(tmp_path / "new", ENGINES) as library:
        indexer.run(library, gallery, workers=1)
        assert library.store.without_thumbnails() == []
    with Library(tmp_path / "old", ENGINES) as library:
        without_thumbnails(library, gallery)
        assert len(library.store.without_thumbnails()) == 3
        journal = {name: library.store.journal_seq(name) for name in ENGINES}
        stages = []
        report = indexer.run(library, gallery, workers=1, on_start=lambda stage, total: stages.append((stage, total)))
        assert report.indexed == 0 and report.unchanged == 3
        assert stages == [("all engines", 0), ("thumbnails", 3)]
        assert library.store.without_thumbnails() == []
        assert {name: library.store.journal_seq(name) for name in ENGINES} == journal  # no feature made again
        for image_id in range(3):
            made = library.store.thumbnail(image_id)
            path = library.store.record(image_id).file_name
            with Library(tmp_path / f"fresh{image_id}", ENGINES) as fresh:
                fresh.add(0, open(path, "rb").read())
                assert fresh.store.thumbnail(0) == made  # as an add makes it


def test_an_older_image_gets_its_thumbnail_on_first_request_where_its_bytes_can_be_read(tmp_path, photos):
    gallery = gallery_of(tmp_path, photos)
    data_dir = tmp_path / "data"
    with Library(data_dir, ENGINES) as library:
        without_thumbnails(library, gallery)
        uploaded = encode(photos["rocket"])
        library.store.add(ImageRecord(7, "rocket", digest=_digest(uploaded)), library.extract(uploaded))
    changed = sorted(gallery.iterdir())[2]
    changed.write_bytes(encode(photos["rocket"]))
    os.utime(changed, ns=(1, 1))
    settings = Settings(data_dir=data_dir, engines=ENGINES)
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        assert thumbnail_of(client, 0).size == (256, 256)  # astronaut, from its file
        assert client.app.state.library.store.thumbnail(0)  # kept
        assert ok(client.get("/images/0"))["width"] == 512
        assert "add it again" in error(client.get("/images/2/thumbnail"), 404)  # its file changed since
        assert "add it again" in error(client.get("/images/7/thumbnail"), 404)  # an upload's bytes are not kept
        assert ok(client.get("/images/7"))["width"] is None


def test_search_by_a_stored_image_finds_its_copy_with_the_verdict_an_upload_gets(tmp_path, photos):
    engines = ["phash", "color", "global", "local"]
    settings = Settings(data_dir=tmp_path / "data", engines=engines)
    copy = encode(ImageOps.contain(photos["chelsea"], (300, 300)), quality=80)
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        for image_id, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"]):
            add(client, image_id, encode(photos[name]), name)
        add(client, 10, copy, "small chelsea")
        by_id = ok(client.get("/images/10/similar", params={"k": 3}))
        uploaded = ok(client.post("/search", files={"image": ("copy", copy)}, data={"k": 3}))
        assert by_id["hits"][0]["image_id"] == 1 and by_id["hits"][0]["file_name"] == "chelsea"
        assert by_id["verdict"] == uploaded["hits"][1]["verdict"] == "near_duplicate"  # the upload's first is 10
        assert 10 not in [hit["image_id"] for hit in by_id["hits"]]
        assert set(by_id["hits"][0]["evidence"]) == set(engines)
        add(client, 11, copy, "the same bytes")
        first = ok(client.get("/images/10/similar", params={"k": 1}))["hits"][0]
        assert (first["image_id"], first["file_name"], first["verdict"]) == (11, "the same bytes", "exact")
        assert "not in the library" in error(client.get("/images/99/similar"), 404)
