"""The local engine through the service and the command line: the original `/calculate_local_features`
and `/local_features_*` endpoints, `/images` and `/search` with every engine, bad uploads, and
`lookalike index`, `search --mirrored` and `train` on a small library.

These need no gallery: each test stores a few photos of its own, scaled down (see local_gallery.py).
"""

import json

import pytest
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, lookalike, ok, upload
from local_gallery import flat_images, sample_png, small, small_crop
from photos import encode
from PIL import Image, ImageOps

from lookalike.config import Settings
from lookalike.engines.local import MIN_MATCHES
from lookalike.indexes.points import MIN_TRAINING_POINTS
from lookalike.service import create_app

API_PHOTOS = {"astronaut": 11, "chelsea": 12, "pexels-2560067": 13, "box_in_scene.png": 14}


# -- the service -----------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path):
    """A fresh service with the local engine beside phash and color (conftest's has only those two)."""
    settings = Settings(
        data_dir=tmp_path / "service",
        engines=["phash", "color", "local"],
        max_upload_bytes=5 * 2**20,
        max_pixels=40_000_000,
    )
    with TestClient(create_app(settings), base_url=LOCAL_URL, raise_server_exceptions=False) as client:
        yield client


def engine_stats(client) -> dict:
    return ok(client.get("/stats"))["engines"]


def image_ids(matches: list) -> list[int]:
    return [m["image_id"] for m in matches]


def check_local(matches: list) -> None:
    for match in matches:
        assert set(match) == {"image_id", "matches", "precise_matches", "file_name"}, match
        assert isinstance(match["matches"], int) and match["matches"] >= MIN_MATCHES
        assert 0 <= match["precise_matches"] <= match["matches"]
    assert [m["matches"] for m in matches] == sorted((m["matches"] for m in matches), reverse=True)


def test_the_original_local_endpoints(client):
    for name, image_id in API_PHOTOS.items():
        ok(upload(client, "/calculate_local_features", encode(small(name)), image_id=image_id, file_name=name))
    ok(upload(client, "/calculate_local_features", sample_png("box.png"), image_id=15, file_name="box.png"))
    stats = engine_stats(client)
    assert stats["local"]["features"] == stats["local"]["indexed"] == 5 and stats["local"]["descriptors"] > 0
    assert stats["phash"]["features"] == stats["color"]["features"] == 0

    by_buffer = "/local_features_get_similar_images_by_image_buffer"
    found = ok(upload(client, by_buffer, encode(small_crop("chelsea")), k=3))
    check_local(found)
    assert found[0]["image_id"] == 12 and found[0]["file_name"] == "chelsea"
    best = found[0]["matches"]
    within = ok(upload(client, by_buffer, encode(small_crop("chelsea")), distance_threshold=best))
    check_local(within)
    assert 12 in image_ids(within) and all(m["matches"] >= best for m in within)
    above = ok(upload(client, by_buffer, encode(small_crop("chelsea")), distance_threshold=best + 1))
    assert 12 not in image_ids(above)

    mirrored = encode(ImageOps.mirror(small_crop("pexels-2560067")))
    assert image_ids(ok(upload(client, by_buffer, mirrored, k=1, mirrored="true"))) == [13]
    assert 13 not in image_ids(ok(upload(client, by_buffer, mirrored, k=3)))
    assert ok(upload(client, by_buffer, encode(flat_images()["grey"], "PNG"), k=3)) == []

    by_id = ok(client.post("/local_features_get_similar_images_by_id", json={"image_id": 15, "k": 3}))
    check_local(by_id)
    assert by_id[0]["image_id"] == 14 and by_id[0]["file_name"] == "box_in_scene.png"
    assert 15 not in image_ids(by_id)
    body = {"image_id": 15, "distance_threshold": by_id[0]["matches"]}
    assert image_ids(ok(client.post("/local_features_get_similar_images_by_id", json=body))) == [14]

    deleted = ok(client.post("/delete_local_features", json={"image_id": 12}))
    assert deleted == {"image_id": 12, "deleted_from": ["local"]}
    deleted = ok(client.post("/delete_local_features", json={"file_name": "box_in_scene.png"}))
    assert deleted == {"image_id": 14, "deleted_from": ["local"]}
    assert 12 not in image_ids(ok(upload(client, by_buffer, encode(small_crop("chelsea")), k=3)))
    assert ok(client.post("/local_features_get_similar_images_by_id", json={"image_id": 15, "k": 3})) == []
    assert client.post("/local_features_get_similar_images_by_id", json={"image_id": 12, "k": 3}).status_code == 404
    assert engine_stats(client)["local"]["features"] == 3


def test_images_and_search_cover_every_engine(client):
    for name, image_id in API_PHOTOS.items():
        ok(upload(client, "/images", encode(small(name)), image_id=image_id, file_name=name), 201)
    stats = engine_stats(client)
    assert all(stats[e]["features"] == stats[e]["indexed"] == 4 for e in ["phash", "color", "local"]), stats

    # The original gateway's reverse search: each engine's list (all 4 stored, up to 200), and them fused.
    found = ok(upload(client, "/reverse_search", encode(small_crop("astronaut"))))
    assert set(found) == {"phash", "color", "local_features", "fused"}
    check_local(found["local_features"])
    assert image_ids(found["local_features"]) == [11] and found["local_features"][0]["file_name"] == "astronaut"
    for engine in ["phash", "color"]:
        assert len(found[engine]) == 4 and all(set(m) == {"image_id", "distance", "file_name"} for m in found[engine])
    fused = found["fused"]["hits"]
    assert fused[0]["image_id"] == 11 and set(fused[0]["evidence"]) == {"phash", "color", "local"}
    evidence = fused[0]["evidence"]["local"]
    assert evidence["rank"] == 1 and evidence["matches"] == found["local_features"][0]["matches"]
    assert evidence["weight"] > 0  # verified matches are evidence of a copy
    assert ok(upload(client, "/search", encode(small_crop("astronaut")), k=2))["hits"] == fused[:2]

    mirrored = encode(ImageOps.mirror(small_crop("chelsea")))
    assert image_ids(ok(upload(client, "/engines/local/search", mirrored, k=1, mirrored="true"))) == [12]
    assert 12 not in image_ids(ok(upload(client, "/engines/local/search", mirrored, k=3)))

    assert sorted(ok(client.delete("/images/11"))["deleted_from"]) == ["color", "local", "phash"]
    stats = engine_stats(client)
    assert all(stats[e]["features"] == stats[e]["indexed"] == 3 for e in ["phash", "color", "local"]), stats
    assert 11 not in image_ids(ok(upload(client, "/reverse_search", encode(small_crop("astronaut"))))["local_features"])


def too_many_bytes() -> bytes:
    data = encode(small("astronaut").resize((1400, 1400)), "BMP")
    assert len(data) > 5 * 2**20
    return data


@pytest.mark.parametrize(
    "kind, status",
    [("empty", 400), ("text", 400), ("truncated", 400), ("too-many-pixels", 413), ("too-many-bytes", 413)],
)
def test_a_bad_upload_to_calculate_local_features_stores_nothing(client, kind, status):
    data = {
        "empty": lambda: b"",
        "text": lambda: b"not a photo\n" * 50,
        "truncated": lambda: encode(small("chelsea"))[:5000],
        "too-many-pixels": lambda: encode(Image.new("L", (7000, 7000), 128), "PNG"),
        "too-many-bytes": too_many_bytes,
    }[kind]()
    response = upload(client, "/calculate_local_features", data, image_id=1)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"detail"}
    stats = ok(client.get("/stats"))
    assert stats["images"] == 0
    empty = {"features": 0, "indexed": 0, "descriptors": 0, "trained_on": 0, "model": "rootsift"}
    assert stats["engines"]["local"] == empty


# -- the command line ------------------------------------------------------------------------------


def test_cli_searches_mirrored_and_refuses_to_train_a_small_library(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["astronaut", "chelsea", "pexels-2560067"]:
        (folder / f"{name}.jpg").write_bytes(encode(small(name)))
    indexed = lookalike(tmp_path / "data", "index", str(folder), "--workers", "1")
    assert indexed.returncode == 0 and "indexed 3" in indexed.stderr, indexed.stderr
    query = tmp_path / "query.jpg"
    query.write_bytes(encode(ImageOps.mirror(small_crop("pexels-2560067"))))
    searched = lookalike(tmp_path / "data", "search", str(query), "--engine", "local", "--mirrored", "--json")
    assert searched.returncode == 0, searched.stderr
    found = json.loads(searched.stdout)
    assert list(found) == ["local"] and found["local"], found
    assert found["local"][0]["file_name"] == str(folder / "pexels-2560067.jpg")
    assert found["local"][0]["matches"] >= MIN_MATCHES and "distance" not in found["local"][0]

    trained = lookalike(tmp_path / "data", "train")
    assert trained.returncode != 0
    message = " ".join(trained.stderr.split())  # rich wraps long lines
    assert f"local holds 0 descriptors; training needs {MIN_TRAINING_POINTS}" not in message, "it has some"
    assert f"descriptors; training needs {MIN_TRAINING_POINTS}" in message, trained.stderr
    assert "Traceback" not in trained.stderr, trained.stderr
