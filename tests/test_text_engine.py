"""The text engine on real photos with words rendered into them, and on OpenCV's own text samples:
found by the exact word, a part of it, a misspelling and its sound, through every route.

Each rendered photo carries one word in its own font, size (12 to 80 px in a 1024-px photo), colours
and angle (0, 5, 90 and 180 degrees), on a plate as a sign or straight on the busy photo.
"""

import json
import random
import time

import pytest
from conftest import MODELS_DIR
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, lookalike, ok, upload
from photos import encode, opencv_sample
from PIL import Image
from words_in_photos import Lettering, fonts, render

from lookalike.config import Settings
from lookalike.service import create_app


def font(name: str):
    return next(path for path in fonts() if path.stem == name)


# image id -> (photo, lettering, queries that must find it first: exact, part, misspelt, sound-alike)
RENDERED = {
    1: (
        "pexels-2560067",
        Lettering("RESTAURANT", 40, font=font("DejaVuSans-Bold")),
        ["restaurant", "restuarant", "RESTAU"],
    ),
    2: ("chelsea", Lettering("PHONE", 28, 5, font("LiberationSerif-Regular"), dark_on_light=False), ["phone", "foan"]),
    3: ("astronaut", Lettering("SMITH", 56, 180, font("LiberationSans-Bold"), plate=False), ["Smith", "Smyth"]),
    4: ("rocket", Lettering("RE16 XYZ", 32, 90, font("DejaVuSansMono")), ["RE16", "re16 xyz"]),
    5: ("coffee", Lettering("Tokyo", 80, font=font("LiberationSerif-Italic"), plate=False), ["tokyo", "Tokio"]),
    6: (
        "pexels-6373478",
        Lettering("Lighthouse", 20, font=font("LiberationSans-Regular")),
        ["lighthouse", "lihgthouse", "thouse"],
    ),
    7: ("pexels-7303773", Lettering("Bakery", 12, font=font("DejaVuSans")), ["bakery", "bakerey"]),
    8: (
        "pexels-3062948",
        Lettering("Cathedral", 24, 90, font("DejaVuSerif-Bold"), dark_on_light=False),
        ["cathedral", "kathedral"],
    ),
    9: (
        "motorcycle_left",
        Lettering("Harbour", 64, 5, font("LiberationMono-Bold"), dark_on_light=False, plate=False),
        ["harbour", "harbor"],
    ),
    10: ("pexels-7303995", Lettering("Museum", 16, 180, font("LiberationSerif-Bold")), ["museum", "museam"]),
}
TEXT_FREE = {20: "hubble_deep_field", 21: "retina", 22: "pexels-6963788", 23: "pexels-cup-of-couple-6962851"}
SAMPLES = {30: "imageTextN.png", 31: "imageTextR.png", 32: "text_defocus.jpg", 33: "text_motion.jpg"}


def rendered(photos, image_id: int) -> bytes:
    name, lettering, _ = RENDERED[image_id]
    return encode(render(photos[name], lettering, random.Random(image_id)), "PNG")


@pytest.fixture(scope="module")
def service(tmp_path_factory, photos):
    settings = Settings(data_dir=tmp_path_factory.mktemp("text"), engines=["text"], models_dir=MODELS_DIR)
    with TestClient(create_app(settings), base_url=LOCAL_URL, raise_server_exceptions=False) as client:
        for image_id in RENDERED:
            ok(
                upload(client, "/images", rendered(photos, image_id), image_id=image_id, file_name=f"word{image_id}"),
                201,
            )
        for image_id, name in TEXT_FREE.items():
            ok(upload(client, "/calculate_text_features", encode(photos[name]), image_id=image_id, file_name=name))
        for image_id, name in SAMPLES.items():
            ok(upload(client, "/images", encode(opencv_sample(name), "PNG"), image_id=image_id, file_name=name), 201)
        yield client


def by_text(service, text: str, k: int = 10, **cutoff) -> list[dict]:
    return ok(service.post("/text_get_similar_images_by_text", json={"text": text, "k": k, **cutoff}))


@pytest.mark.parametrize("image_id", list(RENDERED))
def test_each_word_is_found_first_exactly_in_part_misspelt_and_by_sound(service, image_id):
    for query in RENDERED[image_id][2]:
        hits = by_text(service, query)
        assert hits and hits[0]["image_id"] == image_id, (query, ok(service.get(f"/images/{image_id}/text")), hits)


def test_an_exact_word_outranks_a_misspelling_and_a_sound_alike(service):
    exact = by_text(service, "restaurant")[0]["relevance"]
    assert exact > by_text(service, "restuarant")[0]["relevance"] > by_text(service, "restorant")[0]["relevance"]


def test_a_closer_spelling_ranks_above_a_sound_alike(service):
    # "fone" sounds like PHONE (two edits away) and is one edit from "one" on OpenCV's printed pages:
    # both are found, the closer spelling first, as exact > edits > sound orders them.
    ids = [hit["image_id"] for hit in by_text(service, "fone")]
    assert ids[:2] in ([30, 31], [31, 30]) and ids[2] == 2


def test_text_free_photos_match_no_word(service):
    everything = [query for _, _, queries in RENDERED.values() for query in queries]
    for query in everything + ["champagne", "window", "the"]:
        found = {hit["image_id"] for hit in by_text(service, query, k=100)}
        assert not found & set(TEXT_FREE), query
    for image_id in TEXT_FREE:
        assert ok(service.get(f"/images/{image_id}/text")) == []


def test_opencv_text_samples(service):
    page = " ".join(line["text"] for line in ok(service.get("/images/30/text")))
    assert "In teaching our courses" in page and "real-world imagery" in page
    for query in ["conference papers", "photographs", "imagery", "motivates"]:
        assert {hit["image_id"] for hit in by_text(service, query)[:2]} == {30, 31}, query
    # The blurred samples (for OpenCV's deblurring demos) are not read, and give no invented words.
    assert ok(service.get("/images/32/text")) == [] and ok(service.get("/images/33/text")) == []


def test_stored_text_has_its_lines_with_boxes_where_the_word_is(service, photos):
    (line,) = ok(service.get("/images/3/text"))
    assert line["text"] == "SMITH" and 0.9 < line["confidence"] <= 1
    # Upside down: the text's top left, as it reads, is the lower right corner of its box in the image.
    (x0, y0), _, (x2, y2), _ = line["box"]
    assert x0 > x2 and y0 > y2 and all(0 <= v <= 1 for corner in line["box"] for v in corner)
    # The box is where the word was pasted: render it again on a blank photo and compare.
    blank = Image.new("RGB", photos["astronaut"].size, "white")
    ink = render(blank, RENDERED[3][1], random.Random(3)).convert("L").point(lambda v: v < 128 and 255).getbbox()
    left, right, top, bottom = min(x0, x2) * 512, max(x0, x2) * 512, min(y0, y2) * 512, max(y0, y2) * 512
    # The detector's box holds the letters with a margin (DB's unclip), well under their height.
    margin = RENDERED[3][1].height * 0.6
    assert 0 <= ink[0] - left < margin and 0 <= right - ink[2] < margin, (left, right, ink)
    assert 0 <= ink[1] - top < margin and 0 <= bottom - ink[3] < margin, (top, bottom, ink)


def test_similar_by_image_and_by_id(service, photos):
    # Another photo carrying the same word, in another font and size: found by its text alone.
    name, lettering, _ = RENDERED[1]
    other = Lettering(lettering.text, 30, 0, font("LiberationSerif-Bold"), dark_on_light=False)
    query = encode(render(photos["rocket"], other, random.Random(99)))
    hits = ok(
        service.post("/text_get_similar_images_by_image_buffer", files={"image": ("q.jpg", query)}, data={"k": 3})
    )
    assert hits[0]["image_id"] == 1
    assert ok(service.post("/engines/text/search", files={"image": ("q.jpg", query)}, data={"k": 3})) == hits
    by_id = ok(service.post("/text_get_similar_images_by_id", json={"image_id": 30, "k": 3}))
    assert by_id[0]["image_id"] == 31 and 30 not in [hit["image_id"] for hit in by_id]
    # A photo without text finds nothing by its text.
    nothing = ok(
        service.post("/engines/text/search", files={"image": ("q.jpg", encode(photos["retina"]))}, data={"k": 3})
    )
    assert nothing == []


def test_read_an_upload_without_storing_it(service, photos):
    before = ok(service.get("/stats"))["images"]
    lines = ok(service.post("/get_image_text", files={"image": ("w.png", rendered(photos, 5))}))
    assert [line["text"] for line in lines] == ["Tokyo"]
    assert ok(service.get("/stats"))["images"] == before


@pytest.mark.parametrize(
    "text, status",
    [("", 422), ("   \n\t", 422), ("x" * 10_000, 422), ("\x00\x01\x02", 200), ("東京 タワー", 200), ("🙂🙂", 200)],
)
def test_absurd_queries_are_refused_or_find_nothing_quickly(service, text, status):
    started = time.perf_counter()
    response = service.post("/text_get_similar_images_by_text", json={"text": text, "k": 5})
    assert response.status_code == status, response.text
    assert time.perf_counter() - started < 2
    if status == 200:
        assert response.json() == []
    else:
        assert "text" in str(response.json()["detail"])


def test_deleting_removes_the_text_from_the_index(service, photos):
    ok(upload(service, "/calculate_text_features", rendered(photos, 7), image_id=40, file_name="again"))
    assert {hit["image_id"] for hit in by_text(service, "bakery")} == {7, 40}
    ok(service.post("/delete_text_features", json={"image_id": 40}))
    assert {hit["image_id"] for hit in by_text(service, "bakery")} == {7}
    error(service.get("/images/40/text"), 404)
    error(service.post("/text_get_similar_images_by_id", json={"image_id": 40, "k": 3}), 404)


def test_the_cli_indexes_and_searches_text(tmp_path, photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "sign.png").write_bytes(rendered(photos, 9))
    (folder / "plain.jpg").write_bytes(encode(photos["retina"]))
    data_dir = tmp_path / "data"
    env = {"LOOKALIKE_ENGINES": '["phash", "text"]', "LOOKALIKE_MODELS_DIR": str(MODELS_DIR)}
    assert lookalike(data_dir, "index", str(folder), env=env).returncode == 0
    found = lookalike(data_dir, "search", "--text", "harbor", "--engine", "text", "--json", env=env)
    hits = json.loads(found.stdout)["text"]
    assert [hit["file_name"] for hit in hits] == [str(folder / "sign.png")]
