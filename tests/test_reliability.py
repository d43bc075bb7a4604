"""The defects probing found, each held down by a test: names, ids, upload limits, the decode budget,
one feature per image whatever the route, searches racing deletes, and `index` beside the API."""

import asyncio
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, ok, upload
from photos import encode, photos_dir
from PIL import Image

from lookalike import indexer
from lookalike.config import Settings
from lookalike.decode import DecodeBudget
from lookalike.engines import ENGINES
from lookalike.errors import Busy
from lookalike.features import TextLines
from lookalike.library import Library
from lookalike.service import create_app
from lookalike.store import MAX_FILE_NAME_BYTES

DELETE_BY_NAME_ROUTES = ["/images", "/engines/phash/images"]


@pytest.fixture
def jpeg(photos) -> bytes:
    return encode(photos["coffee"])


# -- names and ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("route", DELETE_BY_NAME_ROUTES)
def test_an_empty_file_name_is_a_422_not_a_500(client, route):
    assert "file_name" in str(error(client.delete(route, params={"file_name": ""}), 422))


def test_an_empty_file_name_in_the_original_delete_body_is_a_422(client):
    assert "file_name" in str(error(client.post("/delete_phash_features", json={"file_name": ""}), 422))


@pytest.mark.parametrize("length", [511, 512, 3000])
def test_long_file_names_are_stored_found_and_deleted(client, jpeg, length):
    name = ("/photos/" + "é" * length)[: length // 2]  # two bytes a character past the prefix
    name = name + "x" * (length - len(name.encode()))
    assert len(name.encode()) == length
    ok(upload(client, "/images", jpeg, image_id=7, file_name=name), 201)
    [hit] = ok(upload(client, "/engines/phash/search", jpeg, k=1))
    assert hit["file_name"] == name
    assert ok(client.delete("/images", params={"file_name": name}))["image_id"] == 7
    assert ok(client.get("/stats"))["images"] == 0


def test_file_names_past_the_limit_or_not_text_are_refused(client, jpeg):
    too_long = "a" * (MAX_FILE_NAME_BYTES + 1)
    assert str(MAX_FILE_NAME_BYTES) in str(error(upload(client, "/images", jpeg, image_id=1, file_name=too_long), 422))
    multibyte = "é" * (MAX_FILE_NAME_BYTES // 2 + 1)  # under the limit in characters, over it in bytes
    assert "bytes" in error(upload(client, "/images", jpeg, image_id=1, file_name=multibyte), 422)
    body, json_type = b'{"file_name": "\\ud800"}', {"content-type": "application/json"}
    surrogate = client.post("/delete_phash_features", content=body, headers=json_type)
    assert "unicode" in str(error(surrogate, 422)).lower()
    assert ok(client.get("/stats"))["images"] == 0


@pytest.mark.parametrize("image_id", ["1001", 1002.0, True, None, [1]])
@pytest.mark.parametrize("route", ["/delete_phash_features", "/phash_get_similar_images_by_id"])
def test_json_ids_are_strict_integers(client, jpeg, route, image_id):
    ok(upload(client, "/images", jpeg, image_id=1), 201)
    ok(upload(client, "/images", jpeg, image_id=1001), 201)
    body = {"image_id": image_id, **({"k": 1} if "similar" in route else {})}
    error(client.post(route, json=body), 422)
    assert ok(client.get("/stats"))["images"] == 2


# -- uploads -------------------------------------------------------------------------------------


def test_an_upload_over_the_limit_is_refused_from_its_content_length(client, settings):
    response = client.post(
        "/images",
        content=b"x" * 1000,
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(10 * 2**30)},
    )
    assert "limit" in error(response, 413)


def test_a_body_without_a_length_is_read_only_to_the_limit(client, settings):
    """Sent in chunks with no Content-Length: the service stops reading just past the limit."""
    chunk = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n' + b"\0" * 65_000
    pulled, statuses = 0, []

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}  # an endless upload

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/images",
        "raw_path": b"/images",
        "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"content-type", b"multipart/form-data; boundary=b")],
        "scheme": "http",
        "server": ("localhost", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
        "http_version": "1.1",
        "state": {},
        "app": client.app,
    }
    asyncio.run(client.app(scope, receive, send))
    assert statuses == [413]
    assert pulled * len(chunk) <= settings.max_upload_bytes + 3 * len(chunk) + 64 * 1024


def test_a_busy_decode_budget_waits_then_answers_503_with_retry_after(tmp_path, jpeg):
    settings = Settings(data_dir=tmp_path, engines=["phash"], decode_budget_pixels=1_000_000, decode_wait_seconds=0.2)
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        budget = client.app.state.library.decode_budget
        with budget.reserve(900_000):  # another request's huge image, being decoded
            response = upload(client, "/images", jpeg, image_id=1)
            assert "try again" in error(response, 503)
            assert int(response.headers["retry-after"]) >= 1
        ok(upload(client, "/images", jpeg, image_id=1), 201)  # the budget is free again


def test_the_decode_budget_lets_a_waiting_decode_through_when_pixels_are_freed():
    budget = DecodeBudget(100, wait_seconds=5)
    events = []

    def second():
        with budget.reserve(50):
            events.append("second decodes")

    with budget.reserve(80):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.2)
        assert thread.is_alive() and not events, "50 more pixels do not fit beside 80"
        events.append("first done")
    thread.join(2)
    assert events == ["first done", "second decodes"]
    impatient = DecodeBudget(100, wait_seconds=0.05)
    with impatient.reserve(80), pytest.raises(Busy):
        with impatient.reserve(50):
            pass
    with impatient.reserve(500):  # larger than the whole budget: it decodes alone
        pass


# -- one feature per image, whichever route ------------------------------------------------------


def test_every_engine_gets_the_same_feature_through_every_route(tmp_path, photos):
    """Alone, beside the other engines, and in `lookalike index`'s workers: the same decode, the same feature."""
    chessboard = (photos_dir() / "opencv" / "chessboard.png").read_bytes()
    turned = Image.fromarray(np.asarray(photos["pexels-1317558"])).transpose(Image.Transpose.ROTATE_90)
    uploads = {
        "chessboard.png": chessboard,
        "large.jpg": encode(photos["pexels-1317558"]),
        "turned.png": encode(turned, "PNG"),
    }
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name, data in uploads.items():
        (gallery / name).write_bytes(data)
    engines = [name for name, engine in ENGINES.items() if engine.enabled_by_default]
    with Library(tmp_path / "data", engines) as library:
        indexer.run(library, gallery, workers=1)
        for name, data in uploads.items():
            together = library.extract(data)
            stored_id = library.store.id_for_name(str(gallery / name))
            for engine in engines:
                alone = library.extract(data, [engine])[engine]
                assert same(together[engine], alone), (name, engine, "alone vs with every engine")
                assert same(library.store.feature(engine, stored_id), alone), (name, engine, "index vs API")


def same(a, b) -> bool:
    if hasattr(a, "descriptors"):
        return np.array_equal(a.xy, b.xy) and np.array_equal(a.descriptors, b.descriptors)
    if isinstance(a, TextLines):
        return a == b
    if a.dtype.kind == "f":  # a model batched over 8 images in a worker rounds its last bits differently
        return np.allclose(a, b, rtol=0, atol=1e-6)
    return np.array_equal(a, b)


def test_an_image_added_everywhere_is_found_at_distance_0_through_each_engines_search(client):
    chessboard = (photos_dir() / "opencv" / "chessboard.png").read_bytes()
    ok(upload(client, "/images", chessboard, image_id=3), 201)
    for route in ["/phash_get_similar_images_by_image_buffer", "/engines/phash/search", "/engines/color/search"]:
        [hit] = ok(upload(client, route, chessboard, distance_threshold=0))
        assert hit["image_id"] == 3 and hit["distance"] == 0, route


# -- searches and deletes ------------------------------------------------------------------------


def test_a_hit_whose_image_was_deleted_meanwhile_is_not_a_result(library, photos):
    library.add(1, encode(photos["coffee"]), "coffee.jpg")
    library.add(2, encode(photos["rocket"]), "rocket.jpg")
    library.store.delete(1)  # deleted between the index's answer and the names' lookup
    hits = library.similar_to_image("phash", encode(photos["coffee"]), k=2)
    assert [(hit.image_id, hit.file_name) for hit in hits] == [(2, "rocket.jpg")]


def test_clients_adding_deleting_and_searching_the_same_ids_agree_at_the_end(client, photos):
    images = {i: encode(photos[name]) for i, name in enumerate(["coffee", "rocket", "chelsea", "astronaut"])}
    stop, bad_hits, failures = threading.Event(), [], []

    def writer(ids):
        while not stop.is_set():
            for i in ids:
                for response in (
                    upload(client, "/images", images[i], image_id=i, file_name=f"photo-{i}.jpg"),
                    client.delete(f"/images/{i}"),
                ):
                    if response.status_code >= 500:
                        failures.append(response.text)

    def searcher():
        while not stop.is_set():
            for i in images:
                response = upload(client, "/search", images[i], k=4)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                hits = response.json()["hits"]
                bad_hits.extend(h for h in hits if h["file_name"] != f"photo-{h['image_id']}.jpg")

    threads = [threading.Thread(target=writer, args=([0, 1],)), threading.Thread(target=writer, args=([2, 3],))]
    threads += [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    threading.Event().wait(4)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures and not bad_hits, (failures[:3], bad_hits[:3])
    library = client.app.state.library
    stats = ok(client.get("/stats"))
    stored = {r.image_id for r in library.store.records()}
    assert stats["images"] == len(stored)
    for engine in ["phash", "color"]:
        assert set(library.store.feature_ids(engine).tolist()) == stored
        assert stats["engines"][engine]["indexed"] == len(stored)
        found = {hit.image_id for hit in library.similar_to_image(engine, images[0], k=10)}
        assert found == stored, engine


# -- `lookalike index` beside the API ------------------------------------------------------------


def test_index_leaves_images_added_through_the_api_alone(tmp_path, photos):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "coffee.jpg").write_bytes(encode(photos["coffee"]))
    (gallery / "rocket.jpg").write_bytes(encode(photos["rocket"]))
    with Library(tmp_path / "data", ["phash"]) as library:
        api_name = str((gallery / "coffee.jpg").resolve())
        library.add(500, encode(photos["chelsea"]), api_name)  # a gallery chose a path under the folder
        report = indexer.run(library, gallery, workers=1)
        assert report.indexed == 1 and report.taken == [((gallery / "coffee.jpg").resolve(), 500)]
        assert library.store.record(500).file_name == api_name
        assert library.similar_to_id("phash", 500, k=5) is not None
        chelsea = library.similar_to_image("phash", encode(photos["chelsea"]), k=1)[0]
        assert (chelsea.image_id, chelsea.score) == (500, 0)
        (gallery / "coffee.jpg").unlink()
        report = indexer.run(library, gallery, workers=1)
        assert report.removed == 0 and library.store.record(500) is not None
