"""The local features engine on real photos: crops, an object in a scene, mirror images, images without
keypoints, keypoint spreading, the point index (ranges, deletes, reopening, crashes, training), the
service's endpoints and the CLI.

Extraction costs a few tenths of a second per photo, so one library of every test photo plus some of
OpenCV's samples is built once per module (`gallery_dir`); tests that only search share it open
(`gallery`), tests that write get a copy of its data directory. Crops are cut once, with a seeded rng.
"""

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from photos import encode, opencv_sample
from photos import photos as load_photos
from PIL import Image, ImageOps

from lookalike.api import create_app
from lookalike.config import Settings
from lookalike.engines import create_engine
from lookalike.engines.local import (
    MAX_NEIGHBOURS,
    MIN_MATCHES,
    NEIGHBOUR_RADIUS,
    PER_QUADRANT,
    TOTAL_KEYPOINTS,
    spread,
    working_frame,
)
from lookalike.errors import InvalidRequest, StoreVersionError
from lookalike.library import MIN_TRAINING_POINTS, Library
from lookalike.point_index import PointIndex
from lookalike.point_ranges import PointRanges
from lookalike.store import ImageRecord

# The skimage photos with texture enough that a crop of them must always be found.
TEXTURED = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"]
# OpenCV samples stored beside the photos: the scene the box is in, graf1 (graf3 is a query), and other
# real scenes as distractors that also give the library the descriptors training needs.
SAMPLES = [
    "box_in_scene.png", "graf1.png", "aero1.jpg", "baboon.jpg", "building.jpg", "fruits.jpg", "home.jpg",
    "messi5.jpg", "starry_night.jpg", "stuff.jpg", "butterfly.jpg", "board.jpg", "blox.jpg", "orange.jpg",
    "apple.jpg", "smarties.png", "HappyFish.jpg", "squirrel_cls.jpg", "Blender_Suzanne1.jpg", "leuvenA.jpg",
    "cards.png", "notes.png", "sudoku.png",
]  # fmt: skip
CROP_AREA = 0.3
MIRRORED = ["astronaut", "pexels-2560067", "pexels-4543103"]
LOGGER = "lookalike.library"


@cache
def photos() -> dict[str, Image.Image]:
    return load_photos()


@cache
def ids() -> dict[str, int]:
    """Not 0..n-1: image ids are not positions in any index."""
    found = {name: 1000 + 7 * number for number, name in enumerate(photos())}
    return found | {name: 5000 + 3 * number for number, name in enumerate(SAMPLES)}


@cache
def crops() -> dict[str, Image.Image]:
    """Each photo cut down to CROP_AREA of its area, at a seeded random place, at full resolution."""
    rng = np.random.default_rng(0)
    found = {}
    for name, photo in photos().items():
        side = np.sqrt(CROP_AREA)
        width, height = round(photo.width * side), round(photo.height * side)
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        found[name] = photo.crop((left, top, left + width, top + height))
    return found


def sample_png(name: str) -> bytes:
    return encode(opencv_sample(name), "PNG")


def copy_of(data_dir: Path, target: Path) -> Path:
    return Path(shutil.copytree(data_dir, target))


def crash(library: Library) -> None:
    """Drop a library the way a killed process would: nothing saved, only what LMDB committed."""
    library.store.close()
    library._lock_file.close()


def stored(library: Library, names: list[str]) -> list[tuple[ImageRecord, dict]]:
    """Items for `add_many` with the gallery's stored features: no extraction."""
    return [(ImageRecord(ids()[n], n), {"local": library.store.feature("local", ids()[n])}) for n in names]


def found_ids(matches) -> list[int]:
    return [m.image_id for m in matches]


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    """A closed data directory holding every test photo and SAMPLES in the local engine, added as uploads are."""
    data_dir = tmp_path_factory.mktemp("local-gallery")
    with Library(data_dir, ["local"]) as library:
        for name, photo in photos().items():
            library.add(ids()[name], encode(photo), name)
        for name in SAMPLES:
            library.add(ids()[name], sample_png(name), name)
    return data_dir


@pytest.fixture(scope="module")
def gallery(gallery_dir, tmp_path_factory):
    """The gallery open, for tests that only search it."""
    with Library(copy_of(gallery_dir, tmp_path_factory.mktemp("shared") / "data"), ["local"]) as library:
        yield library


@pytest.fixture(scope="module")
def crop_queries(gallery) -> dict[str, list]:
    """Each crop's query variants, made as a search makes them (JPEG upload, decoded, extracted): once."""
    engine = gallery.engines["local"]
    return {name: engine.query_variants(gallery.decode(encode(crop), ["local"])) for name, crop in crops().items()}


def crop_results(library: Library, queries: dict[str, list], k: int = 3) -> dict[str, list[tuple[int, int]]]:
    index = library.indexes["local"]
    return {name: [(n.image_id, n.matches) for n in index.search(variants, k)] for name, variants in queries.items()}


def misses_of(results: dict[str, list[tuple[int, int]]]) -> dict[str, list[tuple[int, int]]]:
    return {name: found for name, found in results.items() if not found or found[0][0] != ids()[name]}


# -- finding things ----------------------------------------------------------------------------------


def test_the_gallery_is_what_the_tests_assume(gallery):
    stats = gallery.stats()["engines"]["local"]
    assert stats["features"] == stats["indexed"] == len(photos()) + len(SAMPLES) == 69
    assert stats["trained_on"] == 0
    assert stats["descriptors"] >= MIN_TRAINING_POINTS, "training tests need this many descriptors"


def test_the_box_is_found_in_its_scene(gallery):
    found = gallery.similar_to_image("local", sample_png("box.png"), k=5)
    assert found, "box.png found nothing"
    assert found[0].image_id == ids()["box_in_scene.png"] and found[0].file_name == "box_in_scene.png", found
    assert found[0].matches >= MIN_MATCHES and found[0].distance is None


def test_graf3_finds_graf1_and_graf1_finds_graf3(gallery, tmp_path):
    found = gallery.similar_to_image("local", sample_png("graf3.png"), k=5)
    assert found and found[0].image_id == ids()["graf1.png"], found
    assert found[0].matches >= 2 * MIN_MATCHES
    # The reverse: graf3 stored among other photos, graf1 the query.
    with Library(tmp_path, ["local"]) as library:
        library.add_many(stored(gallery, ["box_in_scene.png", "leuvenA.jpg", "astronaut", "pexels-2416933"]))
        library.add(1, sample_png("graf3.png"), "graf3.png")
        found = library.similar_to_image("local", sample_png("graf1.png"), k=5)
        assert found and (found[0].image_id, found[0].file_name) == (1, "graf3.png"), found
        assert found[0].matches >= 2 * MIN_MATCHES


def test_a_30_percent_crop_finds_its_original_first(gallery, crop_queries):
    results = crop_results(gallery, crop_queries)
    misses = misses_of(results)
    print(f"flat index: {len(results) - len(misses)} of {len(results)} crops found first; missed {misses}")
    assert len(photos()) == 46
    assert len(misses) <= 0.1 * len(results), f"{len(misses)} of {len(results)} crops missed: {misses}"
    assert not misses.keys() & set(TEXTURED), misses
    for name, found in results.items():
        if name not in misses:
            assert found[0][1] >= MIN_MATCHES
            assert [m for _, m in found] == sorted((m for _, m in found), reverse=True), found


def test_mirrored_finds_a_mirrored_crop(gallery):
    for name in MIRRORED:
        query = encode(ImageOps.mirror(crops()[name]))
        with_mirror = gallery.similar_to_image("local", query, k=3, mirrored=True)
        assert with_mirror and with_mirror[0].image_id == ids()[name], (name, with_mirror)
        assert with_mirror[0].matches >= 2 * MIN_MATCHES, (name, with_mirror)
        # SIFT is not mirror-invariant: without the mirrored variant the original is not verified at all.
        without = gallery.similar_to_image("local", query, k=3)
        assert ids()[name] not in found_ids(without), (name, without)
    # Mirroring the query does not lose an unmirrored crop.
    plain = gallery.similar_to_image("local", encode(crops()["chelsea"]), k=1, mirrored=True)
    assert found_ids(plain) == [ids()["chelsea"]]


def flat_images() -> dict[str, Image.Image]:
    gradient = np.tile(np.linspace(0, 255, 800).astype(np.uint8), (600, 1))
    return {"grey": Image.new("RGB", (800, 600), (128, 128, 128)), "gradient": Image.fromarray(gradient).convert("RGB")}


def test_an_image_without_keypoints_is_stored_and_searched(gallery, tmp_path):
    engine = gallery.engines["local"]
    for name, image in flat_images().items():
        keypoints = engine.extract(image)
        assert len(keypoints) == 0 and keypoints.descriptors.shape == (0, 128), name
        assert keypoints.xy.shape == (0, 2)
        assert gallery.similar_to_image("local", encode(image, "PNG"), k=5) == []
        assert gallery.similar_to_image("local", encode(image, "PNG"), threshold=0, mirrored=True) == []
    with Library(tmp_path, ["local"]) as library:
        assert library.similar_to_image("local", encode(photos()["astronaut"]), k=5) == []  # empty library
        library.add(1, encode(flat_images()["grey"], "PNG"), "grey.png")
        assert library.similar_to_image("local", encode(photos()["astronaut"]), k=5) == []  # no descriptors at all
        library.add(2, encode(flat_images()["gradient"], "PNG"), "gradient.png")
        library.add_many(stored(gallery, ["astronaut"]))
        stats = library.stats()["engines"]["local"]
        assert stats["features"] == stats["indexed"] == 3
        assert stats["descriptors"] == len(gallery.store.feature("local", ids()["astronaut"]))
        assert library.similar_to_id("local", 1, k=5) == []
        assert library.similar_to_image("local", encode(flat_images()["grey"], "PNG"), k=5) == []
        assert found_ids(library.similar_to_image("local", encode(crops()["astronaut"]), k=5)) == [ids()["astronaut"]]
        assert library.delete(1) == ["local"]
        assert library.stats()["engines"]["local"]["indexed"] == 2
    with Library(tmp_path, ["local"]) as library:  # a zero-length range survives saving and loading
        assert library.stats()["engines"]["local"]["indexed"] == 2
        assert library.indexes["local"].ranges.range_of(2) is not None
        assert library.similar_to_id("local", 2, k=5) == []


# -- keypoint spreading ----------------------------------------------------------------------------


def quadrant_counts(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    quadrant = (xy[:, 0] >= width / 2).astype(int) + 2 * (xy[:, 1] >= height / 2)
    return np.bincount(quadrant, minlength=4)


def most_neighbours(xy: np.ndarray, shape: tuple[int, int]) -> int:
    """The most other keypoints any keypoint has within the spreading radius."""
    radius = NEIGHBOUR_RADIUS * max(shape)
    near = ((xy[:, None] - xy[None]) ** 2).sum(axis=2) <= radius**2
    return int((near.sum(axis=1) - 1).max())


def test_keypoints_are_capped_per_image_and_per_quadrant():
    engine = create_engine("local")
    for name in ["astronaut", "pexels-2560067", "pexels-36030587"]:
        photo = photos()[name]
        keypoints = engine.extract(photo)
        shape = working_frame(photo).shape
        assert max(shape) == 1024 if max(photo.size) > 1024 else shape == photo.size[::-1]
        assert 0 < len(keypoints) <= TOTAL_KEYPOINTS
        per_quadrant = quadrant_counts(keypoints.xy, shape)
        assert (per_quadrant <= PER_QUADRANT).all(), (name, per_quadrant)
        assert keypoints.descriptors.shape == (len(keypoints), 128) and keypoints.descriptors.dtype == np.uint8
        assert (keypoints.xy >= 0).all() and (keypoints.xy < shape[::-1]).all()


def test_spreading_keeps_keypoints_away_from_one_very_textured_patch():
    # A calm interior with a busy photo pasted into its top-left corner: the strongest responses crowd there.
    image = photos()["pexels-6373478"].copy()
    image.thumbnail((1024, 1024))
    patch = photos()["astronaut"].resize((image.width * 3 // 10, image.height * 3 // 10))
    image.paste(patch, (0, 0))
    grey = working_frame(image)
    candidates = create_engine("local")._detector.detect(grey, None)
    strongest = sorted(candidates, key=lambda kp: -kp.response)[:TOTAL_KEYPOINTS]
    kept = spread(candidates, grey.shape)
    assert len(kept) == len(strongest) == TOTAL_KEYPOINTS

    def outside(keypoints) -> int:
        return sum(1 for kp in keypoints if kp.pt[0] >= patch.width or kp.pt[1] >= patch.height)

    assert outside(strongest) <= TOTAL_KEYPOINTS // 4, "the patch should dominate plain top-N selection"
    assert outside(kept) >= 3 * PER_QUADRANT - 10, (outside(kept), outside(strongest))
    assert outside(kept) >= 3 * outside(strongest), (outside(kept), outside(strongest))
    kept_xy = np.array([kp.pt for kp in kept], np.float32)
    strongest_xy = np.array([kp.pt for kp in strongest], np.float32)
    assert (quadrant_counts(kept_xy, grey.shape) <= PER_QUADRANT).all()
    assert most_neighbours(kept_xy, grey.shape) <= 2 * MAX_NEIGHBOURS < most_neighbours(strongest_xy, grey.shape)
    # The engine extracts exactly these.
    assert np.array_equal(create_engine("local").extract(image).xy, kept_xy)


# -- point ranges ----------------------------------------------------------------------------------


def test_point_ranges_match_a_brute_force_map():
    rng = np.random.default_rng(11)
    ranges, owner = PointRanges(), {}  # owner: point id -> image id, for live images only
    live: dict[int, tuple[int, int]] = {}
    next_image, ends = 0, 0
    assert (ranges.lookup(np.array([-1, 0, 5])) == -1).all()  # empty
    for _ in range(300):
        if live and rng.random() < 0.4:
            gone = rng.choice(sorted(live), size=min(len(live), int(rng.integers(1, 4))), replace=False).tolist()
            released = ranges.release(gone + [10**9])  # an unknown id is ignored
            assert sorted(released) == sorted(live.pop(i) for i in gone)
            owner = {p: i for p, i in owner.items() if i not in gone}
        else:
            batch = np.arange(next_image, next_image + int(rng.integers(1, 5)))
            next_image += len(batch)
            lengths = rng.integers(0, 6, len(batch))  # empty ranges included
            starts = ranges.allocate(batch, lengths)
            assert (starts >= ends).all(), "point ids are never reused"
            for image_id, start, length in zip(batch.tolist(), starts.tolist(), lengths.tolist()):
                live[image_id] = (start, start + length)
                owner |= {p: image_id for p in range(start, start + length)}
                assert ranges.range_of(image_id) == (start, start + length)
            ends = ranges.next_point
        points = rng.integers(-3, ranges.next_point + 3, (7, 5))
        expected = np.vectorize(lambda p: owner.get(int(p), -1))(points)
        assert np.array_equal(ranges.lookup(points), expected)
        assert ranges.points == len(owner) and len(ranges) == len(live)
    assert any(start == end for start, end in live.values()), "the run should hold an empty range"
    for image_id in list(live)[:3]:
        assert ranges.range_of(image_id) == live[image_id]
    assert ranges.range_of(10**9) is None
    restored = PointRanges.from_arrays(np.load(io.BytesIO(_saved(ranges))))
    everything = np.arange(-1, ranges.next_point + 1)
    assert np.array_equal(restored.lookup(everything), ranges.lookup(everything))
    assert restored.next_point == ranges.next_point
    assert ranges.release(list(live)) and ranges.lookup(everything).max() == -1 and ranges.points == 0


def _saved(ranges: PointRanges) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **ranges.arrays())
    return buffer.getvalue()


# -- the point index in a library: deletes, reopening, crashes, training ---------------------------


def test_delete_readd_and_reopen(gallery_dir, tmp_path, crop_queries, caplog):
    data_dir = copy_of(gallery_dir, tmp_path / "data")
    some = {name: crop_queries[name] for name in ["chelsea", "coffee", "pexels-2560067", "pexels-4543103"]}
    with Library(data_dir, ["local"]) as library:
        before = crop_results(library, some)
        assert not misses_of(before), before
        descriptors = library.stats()["engines"]["local"]["descriptors"]
        chelsea = ids()["chelsea"]
        length = len(library.store.feature("local", chelsea))
        assert library.delete(chelsea) == ["local"]
        assert chelsea not in [i for i, _ in crop_results(library, {"chelsea": some["chelsea"]})["chelsea"]]
        assert library.stats()["engines"]["local"]["descriptors"] == descriptors - length
        assert library.indexes["local"].ranges.range_of(chelsea) is None
        library.add(chelsea, encode(photos()["chelsea"]), "chelsea")
        assert crop_results(library, some) == before, "re-added, it is found as before"
        assert library.stats()["engines"]["local"]["descriptors"] == descriptors
    caplog.set_level(logging.INFO, LOGGER)
    with Library(data_dir, ["local"]) as library:
        replayed = [r.message for r in caplog.records if "rebuilt" in r.message or "catching up" in r.message]
        assert not replayed, "a cleanly closed library loads its saved index as it is"
        assert crop_results(library, some) == before
        assert library.similar_to_image("local", encode(crops()["coffee"]), k=1)[0].file_name == "coffee"


def test_changes_after_the_last_save_are_caught_up_and_a_lost_index_rebuilt(gallery_dir, tmp_path, caplog):
    data_dir = copy_of(gallery_dir, tmp_path / "data")
    queries = {"graf1": sample_png("graf1.png"), "coffee": encode(crops()["coffee"])}

    def search_every_query(library: Library) -> dict[str, list[tuple[int, int]]]:
        found = {name: library.similar_to_image("local", query, k=3) for name, query in queries.items()}
        return {name: [(m.image_id, m.matches) for m in matches] for name, matches in found.items()}

    library = Library(data_dir, ["local"])
    library.checkpoint()
    library.add(1, sample_png("graf3.png"), "graf3.png")
    library.delete(ids()["coffee"])
    expected = search_every_query(library)
    assert [i for i, _ in expected["graf1"][:2]] == [ids()["graf1.png"], 1]
    assert ids()["coffee"] not in [i for i, _ in expected["coffee"]]
    crash(library)  # the saved index lacks graf3 and still holds coffee
    caplog.set_level(logging.INFO, LOGGER)
    for attempt in ["catching up", "rebuilt"]:
        caplog.clear()
        with Library(data_dir, ["local"]) as library:
            assert any(attempt in r.message for r in caplog.records), [r.message for r in caplog.records]
            stats = library.stats()["engines"]["local"]
            assert stats["features"] == stats["indexed"] == 69
            assert stats["descriptors"] == sum(len(f) for f in library.store.read_features("local")[1])
            assert search_every_query(library) == expected, attempt
        (data_dir / "indexes" / "local.faiss").unlink()


def test_training_switches_to_the_compressed_index_and_it_still_finds_crops(
    gallery_dir, tmp_path, crop_queries, monkeypatch
):
    data_dir = copy_of(gallery_dir, tmp_path / "data")
    with Library(data_dir, ["local"]) as library:
        points = library.stats()["engines"]["local"]["descriptors"]
        assert library.train("local") is False, "without force, a small library stays exact"
        leuven, graf3 = ids()["leuvenA.jpg"], 1
        build = library._build_trained

        def build_while_writing(engine, points):
            trained = build(engine, points)
            # Writes that land while the new index is built: the journal must replay them into it.
            library.add(graf3, sample_png("graf3.png"), "graf3.png")
            library.delete(leuven)
            return trained

        monkeypatch.setattr(library, "_build_trained", build_while_writing)
        assert library.train("local", force=True) is True
        stats = library.stats()["engines"]["local"]
        assert stats["trained_on"] == points and stats["indexed"] == stats["features"] == 69
        assert stats["descriptors"] == sum(len(f) for f in library.store.read_features("local")[1])
        assert library.indexes["local"].ranges.range_of(leuven) is None
        graf1 = library.similar_to_image("local", sample_png("graf1.png"), k=2)
        assert found_ids(graf1) == [ids()["graf1.png"], graf3]

        results = crop_results(library, crop_queries)
        misses = misses_of(results)
        print(f"trained index: {len(results) - len(misses)} of {len(results)} crops found first; missed {misses}")
        assert len(misses) <= 0.15 * len(results), f"{len(misses)} of {len(results)} crops missed: {misses}"
        assert not misses.keys() & set(TEXTURED), misses
        # Removing from the trained index works as in the flat one.
        library.delete(ids()["rocket"])
        assert ids()["rocket"] not in [i for i, _ in crop_results(library, {"r": crop_queries["rocket"]})["r"]]
        some = {name: crop_queries[name] for name in TEXTURED if name != "rocket"}
        before = crop_results(library, some)
    with Library(data_dir, ["local"]) as library:
        stats = library.stats()["engines"]["local"]
        assert stats["trained_on"] == points and stats["indexed"] == 68
        assert crop_results(library, some) == before


def test_training_too_few_descriptors_is_a_clear_invalid_request(gallery, tmp_path):
    with Library(tmp_path, ["phash", "local"]) as library:
        library.add_many(stored(gallery, ["astronaut", "chelsea", "coffee"]))
        points = library.stats()["engines"]["local"]["descriptors"]
        message = f"local holds {points} descriptors; training needs {MIN_TRAINING_POINTS}"
        with pytest.raises(InvalidRequest, match=message) as raised:
            library.train("local", force=True)
        assert raised.value.status == 422
        with pytest.raises(InvalidRequest, match="nothing to train"):
            library.train("phash", force=True)
        library.maintain()  # nothing to do, and no error
        assert library.stats()["engines"]["local"]["trained_on"] == 0
        assert isinstance(library.indexes["local"], PointIndex)


# -- the store -------------------------------------------------------------------------------------


def test_another_descriptor_setting_is_refused_by_name(gallery, tmp_path):
    with Library(tmp_path, ["local"]) as library:
        library.add_many(stored(gallery, ["astronaut"]))
    with pytest.raises(StoreVersionError, match="local") as raised:
        Library(tmp_path, ["local"], engine_options={"local": {"descriptor": "sift"}})
    assert "rootsift" in raised.value.message and '"sift"' in raised.value.message
    del raised
    with Library(tmp_path, ["local"]) as library:  # the refused open left the directory usable
        assert library.stats()["engines"]["local"]["features"] == 1


# -- XFeat -----------------------------------------------------------------------------------------


def test_xfeat_descriptors_verify_a_crop_against_its_original():
    engine = create_engine("local", {"descriptor": "xfeat"})
    assert engine.spec.dim == 64 and engine.spec.model == "xfeat"
    original = engine.extract(small("pexels-2560067", 640))
    crop = engine.extract(small_crop("pexels-2560067", 640))
    other = engine.extract(small("pexels-4543103", 640))
    for keypoints in (original, crop, other):
        assert keypoints.descriptors.shape == (len(keypoints), 64) and keypoints.descriptors.dtype == np.uint8
        assert len(keypoints) > 100
    assert engine.verify(crop, original) >= MIN_MATCHES
    assert engine.verify(crop, other) == 0


# -- the service -----------------------------------------------------------------------------------


@cache
def small(name: str, side: int = 1024) -> Image.Image:
    image = (photos()[name] if name in photos() else opencv_sample(name)).copy()
    image.thumbnail((side, side))
    return image


@cache
def small_crop(name: str, side: int = 1024) -> Image.Image:
    """The middle of `small(name)`, 55% of each side (30% of the area)."""
    image = small(name, side)
    left, top = image.width // 5, image.height // 4
    return image.crop((left, top, left + image.width * 55 // 100, top + image.height * 55 // 100))


API_PHOTOS = {"astronaut": 11, "chelsea": 12, "pexels-2560067": 13, "box_in_scene.png": 14}


@pytest.fixture
def client(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "service",
        engines=["phash", "color", "local"],
        max_upload_bytes=5 * 2**20,
        max_pixels=40_000_000,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def upload(client, url: str, data: bytes, **form):
    files = {"image": ("upload.jpg", data, "application/octet-stream")}
    return client.post(url, files=files, data={key: str(value) for key, value in form.items()})


def ok(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()


def engine_stats(client) -> dict:
    return ok(client.get("/stats"))["engines"]


def image_ids(matches: list) -> list[int]:
    return [m["image_id"] for m in matches]


def check_local(matches: list) -> None:
    for match in matches:
        assert set(match) == {"image_id", "matches", "file_name"}, match
        assert isinstance(match["matches"], int) and match["matches"] >= MIN_MATCHES
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

    found = ok(upload(client, "/search", encode(small_crop("astronaut")), k=3))
    assert set(found) == {"phash", "color", "local"}
    check_local(found["local"])
    assert found["local"][0]["image_id"] == 11 and found["local"][0]["file_name"] == "astronaut"
    for engine in ["phash", "color"]:
        assert len(found[engine]) == 3 and all(set(m) == {"image_id", "distance", "file_name"} for m in found[engine])

    # A distance threshold gets every image within it from phash and color, and only verified matches from local.
    found = ok(upload(client, "/search", encode(small_crop("astronaut")), distance_threshold=1e9))
    assert len(found["phash"]) == len(found["color"]) == 4
    check_local(found["local"])
    assert image_ids(found["local"]) == [11]

    mirrored = encode(ImageOps.mirror(small_crop("chelsea")))
    assert image_ids(ok(upload(client, "/search", mirrored, k=1, mirrored="true"))["local"]) == [12]
    assert 12 not in image_ids(ok(upload(client, "/search", mirrored, k=3))["local"])
    assert image_ids(ok(upload(client, "/engines/local/search", mirrored, k=1, mirrored="true"))) == [12]

    assert sorted(ok(client.delete("/images/11"))["deleted_from"]) == ["color", "local", "phash"]
    stats = engine_stats(client)
    assert all(stats[e]["features"] == stats[e]["indexed"] == 3 for e in ["phash", "color", "local"]), stats
    assert 11 not in image_ids(ok(upload(client, "/search", encode(small_crop("astronaut")), k=3))["local"])


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
    assert stats["engines"]["local"] == {"features": 0, "indexed": 0, "descriptors": 0, "trained_on": 0}


# -- the command line ------------------------------------------------------------------------------


def lookalike(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOOKALIKE_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "lookalike", *args], env=env, capture_output=True, text=True)


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
    assert found["local"][0]["matches"] >= MIN_MATCHES and found["local"][0]["distance"] is None

    trained = lookalike(tmp_path / "data", "train")
    assert trained.returncode != 0
    message = " ".join(trained.stderr.split())  # rich wraps long lines
    assert f"local holds 0 descriptors; training needs {MIN_TRAINING_POINTS}" not in message, "it has some"
    assert f"descriptors; training needs {MIN_TRAINING_POINTS}" in message, trained.stderr
    assert "Traceback" not in trained.stderr, trained.stderr
