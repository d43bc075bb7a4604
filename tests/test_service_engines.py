"""Every registered engine through HTTP: its generic routes and the original services' names for it.

One service holds a few photos in every engine (the neural models are exported once per test run);
each test runs once per engine and reads the engine's measure (distance, matches or relevance) from
the library rather than branching on its name.
"""

from functools import cache

import pytest
from conftest import MODELS_DIR
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, TEXT_QUERIES, error, ok, upload
from photos import encode
from photos import photos as load_photos
from words_in_photos import with_its_word

from lookalike.config import Settings
from lookalike.engines import ENGINES, TextSearchable
from lookalike.service import create_app
from lookalike.service.legacy import SERVICE_NAMES
from lookalike.service.params import THRESHOLD_FIELDS

PHOTOS = {"astronaut": 11, "chelsea": 12, "coffee": 13, "rocket": 14, "pexels-2560067": 15}


@cache
def jpeg(name: str) -> bytes:
    """The photo with a word in it (for the text engine), at most 640 px."""
    image = with_its_word(load_photos()[name], name)
    image.thumbnail((640, 640))
    return encode(image)


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_captioner):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("every-engine"),
        engines=list(ENGINES),
        models_dir=MODELS_DIR,
        caption_model=tiny_captioner,
    )
    with TestClient(create_app(settings), base_url=LOCAL_URL, raise_server_exceptions=False) as client:
        for name, image_id in PHOTOS.items():
            ok(upload(client, "/images", jpeg(name), image_id=image_id, file_name=name), 201)
        yield client


@pytest.fixture(params=list(ENGINES))
def engine(request) -> str:
    return request.param


def measure(service, engine: str) -> str:
    return service.app.state.library.measure(engine).value


def check_hits(hits: list, measure: str) -> None:
    precise = {"precise_matches"} if measure == "matches" else set()  # points engines also count these
    for hit in hits:
        assert set(hit) == {"image_id", measure, "file_name"} | precise, hit
    scores = [hit[measure] for hit in hits]
    assert scores == sorted(scores, reverse=measure != "distance"), "best first"


def test_an_uploaded_photo_finds_itself_first(service, engine):
    service_name = SERVICE_NAMES.get(engine, engine)
    for url in (f"/engines/{engine}/search", f"/{service_name}_get_similar_images_by_image_buffer"):
        hits = ok(upload(service, url, jpeg("chelsea"), k=3))
        check_hits(hits, measure(service, engine))
        assert hits[0]["image_id"] == PHOTOS["chelsea"] and hits[0]["file_name"] == "chelsea", (url, hits)
    everything = ok(upload(service, "/reverse_search", jpeg("chelsea")))[service_name]
    assert everything[0]["image_id"] == PHOTOS["chelsea"]


def test_the_engines_own_threshold_field_bounds_its_hits(service, engine):
    score = measure(service, engine)
    best = ok(upload(service, f"/engines/{engine}/search", jpeg("chelsea"), k=1))[0]
    field = THRESHOLD_FIELDS[service.app.state.library.measure(engine)]
    within = ok(upload(service, f"/engines/{engine}/search", jpeg("chelsea"), **{field: best[score]}))
    check_hits(within, score)
    assert within[0] == best and all(hit[score] == best[score] for hit in within), "a cutoff at the best: its ties"
    others = [name for name in THRESHOLD_FIELDS.values() if name != field]
    assert "give k or" in error(upload(service, f"/engines/{engine}/search", jpeg("chelsea"), **{others[0]: 1}), 422)


def test_similar_to_a_stored_photo_leaves_it_out(service, engine):
    image_id = PHOTOS["rocket"]
    generic = ok(service.get(f"/engines/{engine}/images/{image_id}/similar", params={"k": 4}))
    body = {"image_id": image_id, "k": 4}
    original = ok(service.post(f"/{SERVICE_NAMES.get(engine, engine)}_get_similar_images_by_id", json=body))
    check_hits(generic, measure(service, engine))
    assert generic == original and image_id not in [hit["image_id"] for hit in generic]
    error(service.get(f"/engines/{engine}/images/999/similar", params={"k": 4}), 404)


def test_a_text_finds_the_photo_it_names(service, engine):
    text, photo = TEXT_QUERIES.get(engine, ("a cat", None))
    generic = service.post(f"/engines/{engine}/search_text", json={"text": text, "k": 2})
    if not issubclass(ENGINES[engine], TextSearchable):
        assert "no text search" in error(generic, 422)
        return
    by_text = f"/{SERVICE_NAMES.get(engine, engine)}_get_similar_images_by_text"
    original = service.post(by_text, json={"text": text, "k": 2})
    assert ok(generic)[0]["file_name"] == photo and ok(original) == ok(generic)


def test_add_and_delete_by_the_generic_and_the_original_names(service, engine):
    stats = ok(service.get("/stats"))["engines"][engine]
    assert stats["features"] == stats["indexed"] == len(PHOTOS)
    ok(upload(service, f"/engines/{engine}/images", jpeg("astronaut"), image_id=90), 201)
    ok(upload(service, f"/calculate_{engine}_features", jpeg("coffee"), image_id=91))
    assert ok(service.get("/stats"))["engines"][engine]["indexed"] == len(PHOTOS) + 2
    assert ok(service.delete(f"/engines/{engine}/images/90")) == {"image_id": 90, "deleted_from": [engine]}
    assert ok(service.post(f"/delete_{engine}_features", json={"image_id": 91}))["deleted_from"] == [engine]
    stats = ok(service.get("/stats"))["engines"][engine]
    assert stats["features"] == stats["indexed"] == len(PHOTOS)
    error(service.post(f"/delete_{engine}_features", json={"image_id": 91}), 404)
