"""The HTTP service, end to end on real photos: every endpoint, its answers and its errors.

Read-only checks share one module-wide service holding GALLERY; anything that writes gets a fresh
service over its own data directory. Clients never re-raise server exceptions, so a crash shows up
as the 500 a real client would see, and "never 500" is asserted like any other status.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, ok
from photos import encode
from photos import photos as load_photos
from PIL import Image, ImageOps

from lookalike.config import Settings
from lookalike.service import create_app

ENGINES = ["phash", "color"]
GALLERY = [
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
    "pexels-1317558", "pexels-2416933", "pexels-2560067", "pexels-3062948",
    "pexels-36030587", "pexels-36179987", "pexels-36236147",
]  # fmt: skip
IDS = {name: 1000 + 7 * i for i, name in enumerate(GALLERY)}  # not 0..n-1: ids are not index positions
QUERIES = ["astronaut", "coffee", "pexels-2416933", "pexels-36030587"]
# A transformed copy of a photo is within a few dozen bits of it; different photos are 250+ of 576 apart.
NEAR = 32
FAR = 200

# -- photos and uploads ----------------------------------------------------------------------------


@cache
def photo(name: str) -> Image.Image:
    """The named photo, at most 640 px a side: full-size interiors only slow the suite down."""
    image = load_photos()[name].copy()
    image.thumbnail((640, 640))
    return image


@cache
def jpeg(name: str) -> bytes:
    return encode(photo(name))


def exif_rotated(image: Image.Image, rotated: bool = True) -> bytes:
    """The pixels turned a quarter, as a camera held upright stores them, tagged orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    turned = image.transpose(Image.Transpose.ROTATE_90)
    return encode(turned, "JPEG", quality=90, **({"exif": exif.tobytes()} if rotated else {}))


def sixteen_bit(image: Image.Image) -> Image.Image:
    wide = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    assert wide.mode.startswith("I;16")
    return wide


def transparent_corner(image: Image.Image) -> Image.Image:
    """A palette image whose top-left corner is the transparent colour, used nowhere else."""
    paletted = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    paletted.paste(255, (0, 0, image.width // 32, image.height // 32))
    return paletted


TRANSFORMS = {
    "recompressed": lambda image: encode(image, "JPEG", quality=60),
    "mirrored": lambda image: encode(ImageOps.mirror(image)),
    "resized": lambda image: encode(image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)),
}

FORMATS = {
    "png-alpha": lambda image: encode(image.convert("RGBA"), "PNG"),
    "gif-palette": lambda image: encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
    "gif-transparent": lambda image: encode(transparent_corner(image), "GIF", transparency=255),
    "greyscale-jpeg": lambda image: encode(image.convert("L")),
    "greyscale-png": lambda image: encode(image.convert("L"), "PNG"),
    "16-bit-png": lambda image: encode(sixteen_bit(image), "PNG"),
    "cmyk-jpeg": lambda image: encode(image.convert("CMYK"), "JPEG", quality=90),
    "webp": lambda image: encode(image, "WEBP", quality=80),
    "tiff": lambda image: encode(image, "TIFF"),
    "bmp": lambda image: encode(image, "BMP"),
    "exif-orientation-6": exif_rotated,
}


@cache
def bad_upload(kind: str) -> bytes:
    if kind == "empty":
        return b""
    if kind == "text":
        return b"Dear gallery, this is a shopping list, not a photo.\n" * 20
    if kind == "truncated-jpeg":
        data = jpeg("chelsea")
        return data[: len(data) // 2]
    if kind == "too-many-pixels":  # 49 MP of one grey: a few dozen KB, over the fixture's 40 MP
        return encode(Image.new("L", (7000, 7000), 128), "PNG")
    if kind == "too-many-bytes":  # a real photo, uncompressed, over the fixture's 5 MiB
        data = encode(photo("astronaut").resize((1400, 1400)), "BMP")
        assert len(data) > 5 * 2**20
        return data
    raise ValueError(kind)


BAD_UPLOADS = {"empty": 400, "text": 400, "truncated-jpeg": 400, "too-many-pixels": 413, "too-many-bytes": 413}

# -- helpers ---------------------------------------------------------------------------------------


def post_image(client, data: bytes, image_id, url: str = "/images", filename: str = "photo.jpg", **form):
    """Upload `data` as the multipart field `image`, with `image_id`, the file name and other form fields."""
    form.setdefault("file_name", filename)
    fields = {key: str(value) for key, value in form.items() if value is not None}
    if image_id is not None:
        fields["image_id"] = str(image_id)
    return client.post(url, files={"image": (filename, data, "application/octet-stream")}, data=fields)


def search(client, data: bytes, url: str = "/search", **params):
    return client.post(
        url, files={"image": ("query.jpg", data, "image/jpeg")}, data={k: str(v) for k, v in params.items()}
    )


def every_engine(client, data: bytes, k: int) -> dict[str, list]:
    """Each engine's k best, from the original gateway's reverse search (which lists up to 200 each)."""
    found = ok(search(client, data, "/reverse_search"))
    assert found.pop("fused")["hits"] is not None
    return {engine: hits[:k] for engine, hits in found.items()}


def counts(client) -> dict:
    """/stats without its disk use: what a failed request must leave as it was."""
    response = client.get("/stats")
    assert response.status_code == 200
    stats = response.json()
    return {"images": stats["images"], **{name: stats["engines"][name] for name in ENGINES}}


def expect_counts(client, images: int, **features: int) -> None:
    """`images` records; each engine holds (and indexes) `images` features unless given otherwise."""
    want = {"images": images}
    for name in ENGINES:
        n = features.get(name, images)
        want[name] = {"features": n, "indexed": n, "model": None}
    assert counts(client) == want


def check_matches(matches: list) -> None:
    assert isinstance(matches, list)
    for match in matches:
        assert set(match) == {"image_id", "distance", "file_name"}, match
        assert isinstance(match["image_id"], int) and isinstance(match["file_name"], str)
        assert match["distance"] >= 0
    distances = [m["distance"] for m in matches]
    assert distances == sorted(distances), "results must come nearest first"


def pairs(matches: list) -> list[tuple[int, float]]:
    return sorted((m["image_id"], m["distance"]) for m in matches)


def add_gallery(client, names=GALLERY) -> None:
    for name in names:
        ok(post_image(client, jpeg(name), IDS[name], filename=f"{name}.jpg"), 201)


def service(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), base_url=LOCAL_URL, raise_server_exceptions=False)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def client(settings):
    """A fresh, empty service (overrides conftest's only to see 500s as responses)."""
    with service(settings) as client:
        yield client


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One service holding GALLERY in every engine, for tests that only read (and must leave it so)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("shared"), engines=ENGINES, max_upload_bytes=5 * 2**20, max_pixels=40_000_000
    )
    with service(settings) as client:
        add_gallery(client)
        yield client


@pytest.fixture
def gallery(client):
    add_gallery(client)
    return client


# -- service ---------------------------------------------------------------------------------------


def test_health(client):
    assert ok(client.get("/health")) == {"status": "ok"}


def test_stats_of_an_empty_and_a_filled_service(client):
    stats = ok(client.get("/stats"))
    assert stats["images"] == 0 and stats["disk_bytes"]["store"] > 0 and stats["disk_bytes"]["indexes"] >= 0
    assert stats["engines"] == {name: {"features": 0, "indexed": 0, "model": None} for name in ENGINES}
    add_gallery(client, GALLERY[:3])
    expect_counts(client, 3)


def test_search_of_an_empty_service_finds_nothing(client):
    assert ok(search(client, jpeg("astronaut"), "/reverse_search")) == {name: [] for name in ENGINES} | {
        "fused": {"verdict": "none", "hits": []}
    }
    assert ok(search(client, jpeg("astronaut"), "/engines/phash/search", distance_threshold=600)) == []


def test_openapi_lists_every_endpoint_with_the_original_names(shared):
    paths = ok(shared.get("/openapi.json"))["paths"]
    for engine in ENGINES:
        for path in (
            f"/calculate_{engine}_features",
            f"/delete_{engine}_features",
            f"/{engine}_get_similar_images_by_id",
            f"/{engine}_get_similar_images_by_image_buffer",
        ):
            assert "post" in paths.get(path, {}), path
    assert set(paths["/images"]) == {"post", "delete"}
    assert "delete" in paths["/images/{image_id}"]
    assert "post" in paths["/search"]
    assert "get" in paths["/stats"] and "get" in paths["/health"]
    assert set(paths["/engines/{engine}/images"]) == {"post", "delete"}
    assert "delete" in paths["/engines/{engine}/images/{image_id}"]
    assert "get" in paths["/engines/{engine}/images/{image_id}/similar"]
    assert "post" in paths["/engines/{engine}/search"]


# -- searching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_a_transformed_copy_finds_its_original_first(shared, transform):
    for name in QUERIES:
        query = TRANSFORMS[transform](photo(name))
        found = every_engine(shared, query, k=5)
        assert set(found) == set(ENGINES)
        for engine in ENGINES:
            check_matches(found[engine])
            assert len(found[engine]) == 5
            assert found[engine][0]["image_id"] == IDS[name], (engine, name, found[engine])
            assert found[engine][0]["file_name"] == f"{name}.jpg"
        best, second = found["phash"][0]["distance"], found["phash"][1]["distance"]
        assert best <= NEAR and second >= FAR, (name, found["phash"])
        # Every other way to search one engine gives that engine's answer. Searching every engine
        # decodes once, as large as the most demanding engine needs, so distances may drift a little.
        for engine, slack in (("phash", 8), ("color", 0.05)):
            everywhere = {m["image_id"]: m for m in found[engine]}
            for url in (f"/engines/{engine}/search", f"/{engine}_get_similar_images_by_image_buffer"):
                alone = ok(search(shared, query, url, k=5))
                check_matches(alone)
                assert alone[0]["image_id"] == IDS[name], url
                for match in alone:
                    if match["image_id"] in everywhere:
                        assert match["file_name"] == everywhere[match["image_id"]]["file_name"]
                        assert match["distance"] == pytest.approx(everywhere[match["image_id"]]["distance"], abs=slack)


@pytest.mark.parametrize("url", ["/search", "/engines/color/search", "/phash_get_similar_images_by_image_buffer"])
def test_k_limits_the_count(shared, url):
    for k in (1, 3, len(GALLERY), len(GALLERY) + 5):
        found = ok(search(shared, jpeg("rocket"), url, k=k))
        if url == "/search":  # one fused list, by evidence
            found = found["hits"]
            assert [hit["score"] for hit in found] == sorted((hit["score"] for hit in found), reverse=True)
        else:
            check_matches(found)
        assert len(found) == min(k, len(GALLERY))
        assert found[0]["image_id"] == IDS["rocket"]


@pytest.mark.parametrize("engine", ENGINES)
def test_distance_threshold_returns_exactly_those_within_it(shared, engine):
    query = TRANSFORMS["recompressed"](photo("pexels-2560067"))
    everything = ok(search(shared, query, f"/engines/{engine}/search", k=len(GALLERY)))
    assert len(everything) == len(GALLERY)
    for rank in (0, 3, len(GALLERY) - 1):
        cut = everything[rank]["distance"]
        for threshold in (cut, np.nextafter(cut, -1) if engine == "color" else cut - 1):
            if threshold < 0:
                continue
            within = [m for m in everything if m["distance"] <= threshold]
            for url in (f"/engines/{engine}/search", f"/{engine}_get_similar_images_by_image_buffer"):
                found = ok(search(shared, query, url, distance_threshold=repr(float(threshold))))
                check_matches(found)
                assert pairs(found) == pairs(within), (url, threshold)


def test_an_exact_copy_is_at_distance_zero(shared):
    found = every_engine(shared, jpeg("motorcycle_left"), k=2)
    assert [m["image_id"] for m in found["phash"]][0] == IDS["motorcycle_left"]
    assert found["phash"][0]["distance"] == 0 < found["phash"][1]["distance"]


@pytest.mark.parametrize("engine", ENGINES)
def test_similar_to_a_stored_image(shared, engine):
    image_id = IDS["chelsea"]
    everything = ok(shared.get(f"/engines/{engine}/images/{image_id}/similar", params={"k": 100}))
    check_matches(everything)
    assert len(everything) == len(GALLERY) - 1, "every other image, itself left out"
    assert image_id not in {m["image_id"] for m in everything}
    names = {IDS[name]: f"{name}.jpg" for name in GALLERY}
    assert all(m["file_name"] == names[m["image_id"]] for m in everything)
    legacy = ok(shared.post(f"/{engine}_get_similar_images_by_id", json={"image_id": image_id, "k": 100}))
    assert legacy == everything
    top3 = ok(shared.get(f"/engines/{engine}/images/{image_id}/similar", params={"k": 3}))
    assert top3 == everything[:3]
    assert ok(shared.post(f"/{engine}_get_similar_images_by_id", json={"image_id": image_id, "k": 3})) == top3
    cut = everything[4]["distance"]
    within = [m for m in everything if m["distance"] <= cut]
    found = ok(shared.get(f"/engines/{engine}/images/{image_id}/similar", params={"distance_threshold": cut}))
    assert pairs(found) == pairs(within)
    found = ok(
        shared.post(f"/{engine}_get_similar_images_by_id", json={"image_id": image_id, "distance_threshold": cut})
    )
    assert pairs(found) == pairs(within)


def test_similar_to_a_stored_near_duplicate(client):
    add_gallery(client, GALLERY[:6])
    ok(post_image(client, TRANSFORMS["resized"](photo("coffee")), 1, filename="coffee-small.jpg"), 201)
    for engine in ENGINES:
        found = ok(client.get(f"/engines/{engine}/images/{IDS['coffee']}/similar", params={"k": 2}))
        assert found[0]["image_id"] == 1 and found[0]["file_name"] == "coffee-small.jpg"
    found = ok(client.get("/engines/phash/images/1/similar", params={"distance_threshold": NEAR}))
    assert [m["image_id"] for m in found] == [IDS["coffee"]]


def test_only_the_file_name_field_names_an_image(client):
    # Browsers call every uploaded Blob "blob": the upload's own filename must not name (or clash).
    ok(post_image(client, jpeg("chelsea"), 1, filename="blob", file_name="cats/chelsea.jpg"), 201)
    ok(post_image(client, jpeg("coffee"), 2, filename="blob", file_name=None), 201)
    ok(post_image(client, jpeg("rocket"), 3, "/calculate_phash_features", filename="blob", file_name=None))
    found = every_engine(client, jpeg("chelsea"), k=3)
    assert {m["image_id"]: m["file_name"] for m in found["phash"]} == {1: "cats/chelsea.jpg", 2: "", 3: ""}
    assert ok(client.delete("/images", params={"file_name": "cats/chelsea.jpg"}))["image_id"] == 1
    error(client.delete("/images", params={"file_name": "blob"}), 404)


SEARCHES = ["engine-search", "legacy-buffer", "similar", "legacy-by-id"]


def ask(client, how: str, params: dict):
    """One query of the kind `how` on the phash engine, for GALLERY's coffee."""
    if how == "engine-search":
        return search(client, jpeg("coffee"), "/engines/phash/search", **params)
    if how == "legacy-buffer":
        return search(client, jpeg("coffee"), "/phash_get_similar_images_by_image_buffer", **params)
    if how == "similar":
        return client.get(f"/engines/phash/images/{IDS['coffee']}/similar", params=params)
    if how == "legacy-by-id":
        body = {"image_id": IDS["coffee"]}
        for key, value in params.items():
            try:
                body[key] = float(value) if key == "distance_threshold" else int(value)
            except ValueError:
                body[key] = value
        # json.dumps writes NaN as the bare literal, which Python's JSON parser (and so FastAPI) accepts.
        headers = {"content-type": "application/json"}
        return client.post("/phash_get_similar_images_by_id", content=json.dumps(body), headers=headers)
    raise ValueError(how)


@pytest.mark.parametrize("how", SEARCHES)
@pytest.mark.parametrize("params", [{}, {"k": 3, "distance_threshold": 10}], ids=["neither", "both"])
def test_exactly_one_of_k_and_distance_threshold(shared, how, params):
    assert error(ask(shared, how, params), 422) == "give exactly one of k and distance_threshold"


@pytest.mark.parametrize("how", SEARCHES)
@pytest.mark.parametrize(
    "params",
    [{"k": 0}, {"k": -1}, {"k": 10_001}, {"k": "three"}, {"distance_threshold": -1}, {"distance_threshold": "nan"}],
    ids=["k=0", "k=-1", "k=10001", "k=text", "threshold=-1", "threshold=nan"],
)
def test_out_of_range_k_or_threshold_is_422(shared, how, params):
    error(ask(shared, how, params), 422)


@pytest.mark.parametrize("how", SEARCHES)
@pytest.mark.parametrize("threshold", ["1e10", "1e300"])
def test_a_huge_distance_threshold_returns_everything(shared, how, threshold):
    found = ok(ask(shared, how, {"distance_threshold": threshold}))
    expected = len(GALLERY) - 1 if how in ("similar", "legacy-by-id") else len(GALLERY)
    for matches in found.values() if isinstance(found, dict) else [found]:
        check_matches(matches)
        assert len(matches) == expected


# -- adding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/images", "/engines/phash/images", "/calculate_phash_features"])
def test_a_duplicate_id_is_409_and_changes_nothing(client, url):
    ok(post_image(client, jpeg("astronaut"), 5, filename="astronaut.jpg"), 201)
    before = counts(client)
    assert "already" in error(post_image(client, jpeg("coffee"), 5, url, filename="astronaut.jpg"), 409)
    assert counts(client) == before
    found = every_engine(client, jpeg("astronaut"), k=5)
    assert [m["image_id"] for m in found["phash"]] == [5]


def test_an_id_can_be_added_to_each_engine_separately(client):
    assert ok(post_image(client, jpeg("rocket"), 7, "/engines/phash/images", filename="rocket.jpg"), 201) == {
        "image_id": 7
    }
    expect_counts(client, 1, color=0)
    assert every_engine(client, jpeg("rocket"), k=3) == {
        "phash": [{"image_id": 7, "distance": 0.0, "file_name": "rocket.jpg"}],
        "color": [],
    }
    ok(post_image(client, jpeg("rocket"), 7, "/engines/color/images", filename="rocket.jpg"), 201)
    expect_counts(client, 1)
    error(post_image(client, jpeg("rocket"), 7, "/engines/color/images", filename="rocket.jpg"), 409)
    # The original per-engine endpoints do the same.
    assert ok(post_image(client, jpeg("chelsea"), 8, "/calculate_color_features", filename="chelsea.jpg")) == {
        "image_id": 8
    }
    expect_counts(client, 2, phash=1)
    ok(post_image(client, jpeg("chelsea"), 8, "/calculate_phash_features", filename="chelsea.jpg"))
    expect_counts(client, 2)
    error(post_image(client, jpeg("chelsea"), 8, "/calculate_phash_features", filename="chelsea.jpg"), 409)
    for engine in ENGINES:
        found = ok(search(client, jpeg("chelsea"), f"/engines/{engine}/search", k=1))
        assert found[0]["image_id"] == 8 and found[0]["file_name"] == "chelsea.jpg"


@pytest.mark.parametrize("url", ["/images", "/engines/color/images", "/calculate_phash_features"])
def test_a_file_name_owned_by_another_id_is_409(client, url):
    ok(post_image(client, jpeg("coffee"), 1, filename="coffee.jpg"), 201)
    before = counts(client)
    assert "coffee.jpg" in error(post_image(client, jpeg("rocket"), 2, url, filename="coffee.jpg"), 409)
    error(post_image(client, jpeg("rocket"), 2, url, filename="rocket.jpg", file_name="coffee.jpg"), 409)
    assert counts(client) == before


ADDS = ["/images", "/engines/phash/images", "/calculate_color_features"]
UPLOAD_SEARCHES = ["/search", "/reverse_search", "/engines/color/search", "/phash_get_similar_images_by_image_buffer"]


@pytest.mark.parametrize("kind", BAD_UPLOADS)
@pytest.mark.parametrize("url", ADDS)
def test_a_bad_upload_is_a_4xx_and_stores_nothing(client, url, kind):
    ok(post_image(client, jpeg("astronaut"), 1, filename="astronaut.jpg"), 201)
    before = counts(client)
    response = post_image(client, bad_upload(kind), 2, url, filename=f"{kind}.jpg")
    assert isinstance(error(response, BAD_UPLOADS[kind]), str)
    assert counts(client) == before
    error(client.delete("/images", params={"file_name": f"{kind}.jpg"}), 404)
    error(client.delete("/images/2"), 404)


@pytest.mark.parametrize("kind", BAD_UPLOADS)
@pytest.mark.parametrize("url", UPLOAD_SEARCHES)
def test_a_bad_search_upload_is_a_4xx(shared, url, kind):
    before = counts(shared)
    assert isinstance(error(search(shared, bad_upload(kind), url, k=3), BAD_UPLOADS[kind]), str)
    assert counts(shared) == before


@pytest.mark.parametrize("url", ADDS)
@pytest.mark.parametrize("image_id", ["-1", str(2**63), str(2**64), "seven", "1.5", "", None], ids=lambda v: f"id={v}")
def test_a_bad_image_id_is_422_and_stores_nothing(client, url, image_id):
    response = post_image(client, jpeg("coffee"), image_id, url)
    error(response, 422)
    expect_counts(client, 0)


def test_the_largest_image_id_is_accepted(client):
    top = 2**63 - 1
    ok(post_image(client, jpeg("coffee"), top, filename="coffee.jpg"), 201)
    assert every_engine(client, jpeg("coffee"), k=1)["phash"][0]["image_id"] == top
    assert ok(search(client, jpeg("coffee"), k=1))["hits"][0]["verdict"] == "exact"
    assert ok(client.delete(f"/images/{top}")) == {"image_id": top, "deleted_from": ENGINES}


@pytest.mark.parametrize("url", ADDS + UPLOAD_SEARCHES)
def test_a_missing_image_field_is_422(client, url):
    response = client.post(url, data={"image_id": "1", "k": "3"})
    error(response, 422)
    expect_counts(client, 0)


def test_an_image_field_that_is_not_a_file_is_422(client):
    error(client.post("/images", data={"image_id": "1", "image": "not a file"}), 422)
    expect_counts(client, 0)


# -- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_accepted_and_finds_its_original(client, fmt):
    add_gallery(client, GALLERY[:8])
    for name in ("chelsea", "pexels-2416933"):
        data = FORMATS[fmt](photo(name))
        found = ok(search(client, data, "/engines/phash/search", k=2))
        assert found[0]["image_id"] == IDS[name] and found[0]["distance"] <= NEAR, found
        assert found[1]["distance"] >= FAR
        ok(post_image(client, data, IDS[name] + 1, filename=f"{name}.{fmt}"), 201)
        found = ok(client.get(f"/engines/phash/images/{IDS[name] + 1}/similar", params={"k": 1}))
        assert found[0]["image_id"] == IDS[name] and found[0]["distance"] <= NEAR
    expect_counts(client, 10)


def test_exif_orientation_is_applied(client):
    # Stored hashes are not turned (a search also tries quarter turns, so it would find either way).
    add_gallery(client, GALLERY[:8])
    for n, name in enumerate(("astronaut", "pexels-2560067", "motorcycle_left")):
        ok(post_image(client, exif_rotated(photo(name)), 100 + n, filename=f"upright-{n}.jpg"), 201)
        ok(post_image(client, exif_rotated(photo(name), rotated=False), 200 + n, filename=f"sideways-{n}.jpg"), 201)
        upright = ok(client.get(f"/engines/phash/images/{100 + n}/similar", params={"k": 1}))[0]
        sideways = ok(client.get(f"/engines/phash/images/{200 + n}/similar", params={"k": 10}))
        assert upright["image_id"] == IDS[name] and upright["distance"] <= NEAR
        original = [hit for hit in sideways if hit["image_id"] == IDS[name]]
        assert original and original[0]["distance"] >= FAR, "the tag must be what turns it"


# -- deleting -------------------------------------------------------------------------------------


def test_delete_everywhere(gallery):
    image_id = IDS["coffee"]
    assert ok(gallery.delete(f"/images/{image_id}")) == {"image_id": image_id, "deleted_from": ENGINES}
    expect_counts(gallery, len(GALLERY) - 1)
    found = every_engine(gallery, jpeg("coffee"), k=len(GALLERY))
    for engine in ENGINES:
        assert image_id not in {m["image_id"] for m in found[engine]}
        error(gallery.get(f"/engines/{engine}/images/{image_id}/similar", params={"k": 1}), 404)
    error(gallery.delete(f"/images/{image_id}"), 404)
    # Its file name is free again, and so is the id.
    ok(post_image(gallery, jpeg("coffee"), 1, filename="coffee.jpg"), 201)
    ok(gallery.delete("/images/1"))
    ok(post_image(gallery, jpeg("coffee"), image_id, filename="coffee.jpg"), 201)
    expect_counts(gallery, len(GALLERY))
    assert every_engine(gallery, jpeg("coffee"), k=1)["phash"][0]["image_id"] == image_id


def test_delete_everywhere_by_file_name(gallery):
    response = gallery.delete("/images", params={"file_name": "rocket.jpg"})
    assert ok(response) == {"image_id": IDS["rocket"], "deleted_from": ENGINES}
    expect_counts(gallery, len(GALLERY) - 1)
    error(gallery.delete("/images", params={"file_name": "rocket.jpg"}), 404)
    error(gallery.delete("/images"), 422)  # file_name is required


def test_delete_from_one_engine_keeps_the_other(gallery):
    image_id, n = IDS["astronaut"], len(GALLERY)
    assert ok(gallery.delete(f"/engines/phash/images/{image_id}")) == {"image_id": image_id, "deleted_from": ["phash"]}
    expect_counts(gallery, n, phash=n - 1)
    found = every_engine(gallery, jpeg("astronaut"), k=1)
    assert found["phash"][0]["image_id"] != image_id and found["color"][0]["image_id"] == image_id
    error(gallery.get(f"/engines/phash/images/{image_id}/similar", params={"k": 1}), 404)
    assert len(ok(gallery.get(f"/engines/color/images/{image_id}/similar", params={"k": 100}))) == n - 1
    error(gallery.delete(f"/engines/phash/images/{image_id}"), 404)
    error(gallery.post("/delete_phash_features", json={"image_id": image_id}), 404)
    # Back into phash alone; the record (and its file name) was kept for color.
    ok(post_image(gallery, jpeg("astronaut"), image_id, "/engines/phash/images", filename="astronaut.jpg"), 201)
    expect_counts(gallery, n)
    # Deleting from the last engine that holds it removes the record; then the id can be re-added.
    ok(gallery.delete(f"/engines/phash/images/{image_id}"))
    response = gallery.delete("/engines/color/images", params={"file_name": "astronaut.jpg"})
    assert ok(response) == {"image_id": image_id, "deleted_from": ["color"]}
    expect_counts(gallery, n - 1)
    error(gallery.delete("/images", params={"file_name": "astronaut.jpg"}), 404)
    ok(post_image(gallery, jpeg("astronaut"), image_id, filename="astronaut-again.jpg"), 201)
    expect_counts(gallery, n)
    found = every_engine(gallery, jpeg("astronaut"), k=1)
    for engine in ENGINES:
        assert found[engine][0] == {"image_id": image_id, "distance": 0.0, "file_name": "astronaut-again.jpg"}


@pytest.mark.parametrize("engine", ENGINES)
def test_the_original_delete_endpoints(gallery, engine):
    other = next(name for name in ENGINES if name != engine)
    n = len(GALLERY)
    url = f"/delete_{engine}_features"
    assert ok(gallery.post(url, json={"image_id": IDS["chelsea"]})) == {
        "image_id": IDS["chelsea"],
        "deleted_from": [engine],
    }
    expect_counts(gallery, n, **{engine: n - 1})
    assert ok(gallery.post(url, json={"file_name": "coffee.jpg"})) == {
        "image_id": IDS["coffee"],
        "deleted_from": [engine],
    }
    expect_counts(gallery, n, **{engine: n - 2})
    ok(gallery.post(f"/delete_{other}_features", json={"file_name": "coffee.jpg"}))
    expect_counts(gallery, n - 1, **{engine: n - 2, other: n - 1})
    error(gallery.post(url, json={"file_name": "coffee.jpg"}), 404)
    before = counts(gallery)
    for body in ({}, {"image_id": IDS["rocket"], "file_name": "rocket.jpg"}, {"image_id": None, "file_name": None}):
        error(gallery.post(url, json=body), 422)
    error(gallery.post(url, content=b"image_id=1", headers={"content-type": "text/plain"}), 422)
    assert counts(gallery) == before


# -- what is not there ----------------------------------------------------------------------------

MISSING = [
    ("DELETE", "/images/1", None),
    ("DELETE", "/images?file_name=nothing.jpg", None),
    ("DELETE", "/engines/phash/images/1", None),
    ("DELETE", "/engines/color/images?file_name=nothing.jpg", None),
    ("GET", "/engines/phash/images/1/similar?k=3", None),
    ("GET", "/engines/color/images/1/similar?distance_threshold=1", None),
    ("POST", "/delete_phash_features", {"image_id": 1}),
    ("POST", "/delete_color_features", {"file_name": "nothing.jpg"}),
    ("POST", "/phash_get_similar_images_by_id", {"image_id": 1, "k": 3}),
    ("POST", "/color_get_similar_images_by_id", {"image_id": 1, "distance_threshold": 1}),
]


@pytest.mark.parametrize("method, url, body", MISSING)
def test_an_unknown_image_is_404(shared, method, url, body):
    before = counts(shared)
    assert isinstance(error(shared.request(method, url, json=body), 404), str)
    assert counts(shared) == before


@pytest.mark.parametrize("image_id", ["-1", str(2**64)])
@pytest.mark.parametrize(
    "method, url, body",
    [
        ("DELETE", "/images/{id}", None),
        ("DELETE", "/engines/phash/images/{id}", None),
        ("GET", "/engines/color/images/{id}/similar?k=3", None),
        ("POST", "/delete_phash_features", {"image_id": "{id}"}),
        ("POST", "/phash_get_similar_images_by_id", {"image_id": "{id}", "k": 3}),
    ],
)
def test_an_impossible_image_id_is_a_4xx_not_a_crash(shared, image_id, method, url, body):
    if body is not None:
        body = {key: int(image_id) if value == "{id}" else value for key, value in body.items()}
    response = shared.request(method, url.format(id=image_id), json=body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["detail"]


def test_an_unknown_engine_is_404(shared):
    before = counts(shared)
    for response in (
        post_image(shared, jpeg("coffee"), 1, "/engines/clip/images"),
        search(shared, jpeg("coffee"), "/engines/clip/search", k=3),
        shared.delete(f"/engines/clip/images/{IDS['coffee']}"),
        shared.delete("/engines/clip/images", params={"file_name": "coffee.jpg"}),
        shared.get(f"/engines/clip/images/{IDS['coffee']}/similar", params={"k": 3}),
    ):
        assert "clip" in error(response, 404)
    for response in (
        post_image(shared, jpeg("coffee"), 1, "/calculate_clip_features"),
        shared.post("/delete_clip_features", json={"image_id": IDS["coffee"]}),
        shared.post("/clip_get_similar_images_by_id", json={"image_id": IDS["coffee"], "k": 3}),
        search(shared, jpeg("coffee"), "/clip_get_similar_images_by_image_buffer", k=3),
    ):
        error(response, 404)
    assert counts(shared) == before


# -- concurrency and persistence ------------------------------------------------------------------


def test_concurrent_adds_and_searches(client):
    names = GALLERY[:8]
    start = threading.Barrier(len(names))

    def work(name: str) -> None:
        start.wait()
        ok(post_image(client, jpeg(name), IDS[name], filename=f"{name}.jpg"), 201)
        for transform in TRANSFORMS.values():
            found = every_engine(client, transform(photo(name)), k=3)
            assert found["phash"][0]["image_id"] == IDS[name], found  # its own add came first
            check_matches(found["color"])
        ok(client.get(f"/engines/color/images/{IDS[name]}/similar", params={"k": 3}))
        ok(client.get("/stats"))

    with ThreadPoolExecutor(len(names)) as pool:
        for future in [pool.submit(work, name) for name in names]:
            future.result()
    expect_counts(client, len(names))
    for name in names:
        found = every_engine(client, jpeg(name), k=1)
        assert all(found[engine][0]["image_id"] == IDS[name] for engine in ENGINES)


def test_concurrent_deletes_and_adds(gallery):
    def replace(name: str) -> None:
        ok(gallery.delete(f"/images/{IDS[name]}"))
        ok(post_image(gallery, TRANSFORMS["mirrored"](photo(name)), IDS[name] + 1, filename=f"{name}.jpg"), 201)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(replace, GALLERY[:8]))
    expect_counts(gallery, len(GALLERY))
    for name in GALLERY[:8]:
        assert every_engine(gallery, jpeg(name), k=1)["phash"][0]["image_id"] == IDS[name] + 1


def test_everything_survives_a_restart(settings):
    with service(settings) as client:
        add_gallery(client)
        ok(client.delete(f"/engines/phash/images/{IDS['chelsea']}"))
        ok(client.delete("/images", params={"file_name": "rocket.jpg"}))
        before = every_engine(client, TRANSFORMS["resized"](photo("coffee")), k=len(GALLERY))
        similar = ok(client.get(f"/engines/color/images/{IDS['chelsea']}/similar", params={"k": 5}))
    n = len(GALLERY)
    for _ in range(2):  # the second start reads indexes the first one saved again
        with service(settings) as client:
            expect_counts(client, n - 1, phash=n - 2)
            assert every_engine(client, TRANSFORMS["resized"](photo("coffee")), k=len(GALLERY)) == before
            assert ok(client.get(f"/engines/color/images/{IDS['chelsea']}/similar", params={"k": 5})) == similar
            error(client.get(f"/engines/phash/images/{IDS['chelsea']}/similar", params={"k": 5}), 404)
            error(client.delete("/images", params={"file_name": "rocket.jpg"}), 404)
            for name in QUERIES:
                found = every_engine(client, TRANSFORMS["recompressed"](photo(name)), k=1)
                assert found["phash"][0] == {
                    "image_id": IDS[name],
                    "distance": found["phash"][0]["distance"],
                    "file_name": f"{name}.jpg",
                }
    with service(settings) as client:  # and what was written after a restart survives the next
        ok(post_image(client, jpeg("rocket"), 1, filename="rocket.jpg"), 201)
    with service(settings) as client:
        assert every_engine(client, jpeg("rocket"), k=1)["color"][0] == {
            "image_id": 1,
            "distance": 0.0,
            "file_name": "rocket.jpg",
        }
