"""The gateway: the original gateway's routes, the fused reverse search and its verdicts, tiered
duplicate groups, and what keeps a stamp many photos share from outranking a copy's own original.

One service holds real photos in every default engine (models exported once per run); copies are
made from the stored JPEGs as a user's edits would make them.
"""

import io
from dataclasses import replace
from functools import cache

import pytest
from conftest import MODELS_DIR
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, ok, upload
from photos import encode
from photos import photos as load_photos
from PIL import Image, ImageDraw, ImageFont, ImageOps
from words_in_photos import fonts, on_a_phone

import lookalike.duplicates as duplicates
import lookalike.engines.local as local
from lookalike.config import Settings
from lookalike.duplicates import TIERS, Pair, _complete_linkage
from lookalike.engines.local import MIN_MATCHES
from lookalike.fusion import Verdict, shipped_calibration, with_matches
from lookalike.gateway import MIRROR_PRECISE_AT
from lookalike.indexes import Hit, Matches, Measure
from lookalike.indexes.points import CANDIDATES
from lookalike.library import Library
from lookalike.service import create_app

STORED = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "pexels-2560067", "pexels-4389955"]
ABSENT = ["hubble_deep_field", "retina", "pexels-1317558", "pexels-3062948", "pexels-5386834"]  # never added
STRONG = {"exact", "near_duplicate", "copy"}


@cache
def jpeg(name: str, side: int = 800) -> bytes:
    image = load_photos()[name].copy()
    image.thumbnail((side, side))
    return encode(image)


def edited(name: str, edit) -> bytes:
    return encode(edit(Image.open(io.BytesIO(jpeg(name))).convert("RGB")), quality=85)


def crop(image: Image.Image, keep: float) -> Image.Image:
    w, h = round(image.width * keep), round(image.height * keep)
    return image.crop(
        ((image.width - w) // 2, (image.height - h) // 2, (image.width + w) // 2, (image.height + h) // 2)
    )


def stamp(image: Image.Image, text: str = "COPYRIGHT 2025") -> Image.Image:
    image = image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(next(f for f in fonts() if "DejaVuSans-Bold" in f.name)), 100)
    size = int(100 * 0.9 * image.width / draw.textlength(text, font=font))
    font = font.font_variant(size=size)
    middle = (image.width / 2, image.height / 2)
    draw.text(middle, text, font=font, fill="white", anchor="mm", stroke_width=max(1, size // 15), stroke_fill="black")
    return image


# Each edit, and the verdicts its copy may get: a near-duplicate's hashes agree. A heavier edit is
# found first, but its evidence often stays under the calibrated copy threshold, set so that photos
# not in the library are almost never called copies: how often it reaches it is the benchmark's
# number (docs/benchmarks.md, "Verdicts"), not this test's.
NEAR, COPY = {"near_duplicate"}, {"near_duplicate", "copy", "similar", "none"}
EDITS = {
    "re-encoded": (NEAR, lambda im: im),
    "half size": (NEAR, lambda im: im.resize((im.width // 2, im.height // 2))),
    "mirrored": (NEAR, ImageOps.mirror),
    "turned a quarter": (NEAR, lambda im: im.transpose(Image.Transpose.ROTATE_90)),
    "cropped to 70%": (COPY, lambda im: crop(im, 0.7)),
    "turned 10 degrees": (COPY, lambda im: im.rotate(10, Image.Resampling.BICUBIC, fillcolor="black")),
    "stamped": (COPY, stamp),
    "black border": (COPY, lambda im: ImageOps.expand(im, im.width // 10, fill="black")),
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("gateway"), models_dir=MODELS_DIR)
    with TestClient(create_app(settings), base_url=LOCAL_URL, raise_server_exceptions=False) as client:
        for image_id, name in enumerate(STORED):
            ok(upload(client, "/calculate_all_image_features", jpeg(name), image_id=image_id, file_name=name))
        yield client


def test_the_original_gateway_routes(service):
    engines = list(service.app.state.library.engines)
    stats = ok(service.get("/stats"))
    assert all(stats["engines"][e]["features"] == len(STORED) for e in engines), stats
    found = ok(upload(service, "/reverse_search", jpeg("coffee")))
    original_names = {"global": "global_features", "local": "local_features", "image_text": "image_text_features"}
    assert set(found) == {original_names.get(e, e) for e in engines} | {"fused"}
    assert len(found["phash"]) == len(STORED) and found["phash"][0] == {
        "image_id": 2,
        "distance": 0.0,
        "file_name": "coffee",
    }
    fused = found["fused"]
    assert fused["verdict"] == "exact" and fused["hits"][0]["verdict"] == "exact"
    # Each hit's evidence is what each engine's own list says of it.
    for hit in fused["hits"]:
        for engine, evidence in hit["evidence"].items():
            listed = found[original_names.get(engine, engine)][evidence["rank"] - 1]
            assert listed["image_id"] == hit["image_id"]
            assert {k: v for k, v in listed.items() if k not in ("image_id", "file_name")}.items() <= evidence.items()
    scores = [hit["score"] for hit in fused["hits"][1:]]
    assert scores == sorted(scores, reverse=True)

    ok(upload(service, "/calculate_all_image_features", jpeg("retina"), image_id=99, file_name="retina"))
    assert ok(service.post("/delete_all_image_features", json={"image_id": 99})) == {
        "image_id": 99,
        "deleted_from": engines,
    }
    error(service.post("/delete_all_image_features", json={"image_id": 99}), 404)
    error(service.post("/delete_all_image_features", json={"image_id": "99"}), 422)
    error(upload(service, "/calculate_all_image_features", b"not an image", image_id=98), 400)
    assert ok(service.get("/stats"))["images"] == len(STORED)


def test_search_asks_only_the_engines_whose_evidence_counts(service):
    """POST /search leaves out the engines the calibration weighs at nothing (their lists cannot move a
    fused score); the original gateway's route still has every engine's list, and both fuse alike."""
    served = list(service.app.state.library.engines)
    weighed = set(shipped_calibration().weighing(served))
    assert weighed and weighed < set(served)
    data = edited("chelsea", lambda im: crop(im, 0.7))
    fused = ok(upload(service, "/search", data))
    everything = ok(upload(service, "/reverse_search", data))["fused"]
    assert set().union(*(hit["evidence"] for hit in fused["hits"])) <= weighed
    assert set().union(*(hit["evidence"] for hit in everything["hits"])) - weighed
    scores = {hit["image_id"]: hit["score"] for hit in everything["hits"]}
    assert all(hit["score"] == pytest.approx(scores[hit["image_id"]]) for hit in fused["hits"])
    assert fused["hits"][0]["image_id"] == everything["hits"][0]["image_id"] == STORED.index("chelsea")


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_copy_finds_its_original_with_its_verdict(service, edit):
    verdicts, change = EDITS[edit]
    for image_id, name in enumerate(STORED[:4]):
        found = ok(upload(service, "/search", edited(name, change), k=3))
        best = found["hits"][0]
        assert best["image_id"] == image_id and best["verdict"] in verdicts, (name, found)
        assert found["verdict"] == best["verdict"]


# Edits that the engines miss until the gateway looks again: phash, color and global features see the
# frame around a framed photo unless they search with the photo inside it too; the local engine's
# index finds no mirrored crop until the gateway matches the mirror image with the leading hits.
FRAMED = {
    "on a phone's screen": lambda im: on_a_phone(im)[0],
    "white border": lambda im: ImageOps.expand(im, (im.width // 8, im.height // 6), fill="white"),
}


def warmer(image: Image.Image) -> Image.Image:
    r, g, b = image.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.15 + 10))), g, b.point(lambda v: int(v * 0.8))))


@pytest.mark.parametrize("edit", FRAMED)
def test_a_framed_copy_is_found_by_the_photo_in_its_frame(service, edit):
    for image_id, name in enumerate(STORED[:5]):
        found = ok(upload(service, "/search", edited(name, FRAMED[edit]), k=3))
        best = found["hits"][0]
        assert best["image_id"] == image_id and best["verdict"] in STRONG, (name, found)


def test_a_mirrored_crop_is_matched_by_its_mirror_image(service):
    copies = 0
    for image_id, name in enumerate(STORED[:5]):
        query = edited(name, lambda im: warmer(ImageOps.mirror(crop(im, 0.75))))
        assert not ok(upload(service, "/engines/local/search", query, k=3))  # the index alone finds nothing
        best = ok(upload(service, "/search", query, k=3))["hits"][0]
        assert best["image_id"] == image_id, (name, best)
        assert best["evidence"]["local"]["precise_matches"] >= MIRROR_PRECISE_AT, (name, best)
        copies += best["verdict"] in STRONG
    # Those with fewer precise matches than a copy needs on their own stay `similar` unless the other
    # engines' evidence is strong: 78% of such copies are called copies (docs/benchmarks.md).
    assert copies >= 3


def test_a_photo_not_in_the_library_is_no_copy(service):
    for name in ABSENT:
        for query in (jpeg(name), edited(name, lambda im: crop(im, 0.8))):
            found = ok(upload(service, "/search", query, k=5))
            assert found["verdict"] not in STRONG, (name, found["hits"][0])
            assert all(hit["verdict"] not in STRONG for hit in found["hits"])


def test_the_same_bytes_are_exact_and_the_cli_says_so(service):
    found = ok(upload(service, "/search", jpeg("rocket"), k=1))
    assert found["verdict"] == "exact" and found["hits"][0]["image_id"] == 3
    again = ok(upload(service, "/search", edited("rocket", lambda im: im), k=1))
    assert again["verdict"] == "near_duplicate"


def test_duplicates_by_tier_through_the_api(tmp_path):
    settings = Settings(data_dir=tmp_path, engines=["phash", "color", "global", "local"], models_dir=MODELS_DIR)
    # Two photo shoots: shots a moment apart, of the same people and room. A burst, not duplicates.
    burst = {"pexels-7303773": 20, "pexels-cup-of-couple-7303788": 21, "pexels-7303992": 22, "pexels-7303995": 23}
    added = {10: jpeg("coffee"), 11: edited("chelsea", ImageOps.mirror), 12: edited("rocket", lambda im: crop(im, 0.8))}
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        for image_id, name in [*enumerate(STORED), *((i, n) for n, i in burst.items())]:
            ok(upload(client, "/images", jpeg(name), image_id=image_id, file_name=name), 201)
        for image_id, data in added.items():
            ok(upload(client, "/images", data, image_id=image_id, file_name=f"copy {image_id}"), 201)

        def groups(tier: str) -> dict[frozenset, dict]:
            found = ok(client.get("/duplicates", params={"tier": tier}))
            assert found["total"] == len(found["groups"])
            for group in found["groups"]:  # every pair within the group's tier: no chains
                weakest = TIERS.index(Verdict(group["tier"]))
                assert all(TIERS.index(Verdict(pair["tier"])) <= weakest for pair in group["pairs"])
                assert len(group["pairs"]) == len(group["images"]) * (len(group["images"]) - 1) // 2
            return {frozenset(i["image_id"] for i in g["images"]): g for g in found["groups"]}

        assert set(groups("exact")) == {frozenset({2, 10})}
        near = groups("near_duplicate")
        assert set(near) == {frozenset({2, 10}), frozenset({1, 11})}, near  # the mirror image too
        assert near[frozenset({1, 11})]["tier"] == "near_duplicate"
        similar = groups("similar")
        assert any({3, 12} <= ids for ids in similar), similar  # a crop: at least the same scene
        shoots = [g for ids, g in similar.items() if ids & set(burst.values())]
        assert shoots and all(g["tier"] == "similar" for g in shoots), shoots
        paged = ok(client.get("/duplicates", params={"tier": "similar", "offset": 1, "limit": 1}))
        assert paged["total"] == len(similar) and len(paged["groups"]) == 1
        error(client.get("/duplicates", params={"tier": "none"}), 422)
        error(client.get("/duplicates", params={"tier": "twins"}), 422)
        ok(client.delete("/images/10"))
        assert set(groups("exact")) == set()  # the groups are made again once the library changed


def test_groups_are_made_again_only_after_the_library_changes(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(duplicates, "duplicate_groups", lambda library, tier: made.append(tier) or [tier])
    with Library(tmp_path, ["phash", "color"]) as library:
        groups = duplicates.GroupsOfTheLibrary(library)
        library.add(1, jpeg("coffee"))
        assert groups.groups(Verdict.EXACT) == groups.groups(Verdict.EXACT) == [Verdict.EXACT]
        assert groups.groups(Verdict.COPY) == [Verdict.COPY]
        assert made == [Verdict.EXACT, Verdict.COPY]
        library.add(2, jpeg("coffee"))
        groups.groups(Verdict.EXACT)
        library.delete(2, ["color"])
        groups.groups(Verdict.EXACT)
        assert made == [Verdict.EXACT, Verdict.COPY, Verdict.EXACT, Verdict.EXACT]


def test_precise_matches_make_a_copy_and_another_shot_is_never_one():
    calibration = replace(shipped_calibration(), precise_copy_at=40, precise_share=0.8)
    assert calibration.says_copy(25.0, 20.0, []) and not calibration.says_copy(15.0, 20.0, [])
    assert calibration.says_copy(0.0, 20.0, [Matches(45, 44)])  # its pixels: a copy whatever else says
    assert calibration.says_copy(25.0, 20.0, [Matches(30, 29)])
    assert not calibration.says_copy(99.0, 20.0, [Matches(39, 20)])  # another shot of the scene


def test_matches_found_later_join_a_points_list_where_they_beat_it():
    listed = {
        "local": [Hit(7, 40, Measure.MATCHES, "seven", 12), Hit(8, 9, Measure.MATCHES, "eight", 9)],
        "global": [Hit(9, 0.1, Measure.DISTANCE, "nine")],
    }
    found = with_matches(listed, "local", {9: Matches(30, 29), 7: Matches(20, 19), 8: Matches(12, 11)})
    assert [(h.image_id, h.score, h.precise_matches, h.file_name) for h in found["local"]] == [
        (7, 40, 12, "seven"),  # more matches listed already: kept
        (9, 30, 29, "nine"),  # new: named as the other engines named it
        (8, 12, 11, "eight"),
    ]
    assert found["global"] == listed["global"] and len(listed["local"]) == 2  # the given lists are untouched


def test_groups_never_chain_photos_that_are_not_alike():
    def pair(a, b, tier=Verdict.NEAR_DUPLICATE):
        return (a, b), Pair(a, b, tier, {}, 10.0)

    # 1~2, 2~3 and 3~4, but 1 is not like 3 nor 4: no group may hold both ends of the chain.
    pairs = dict([pair(1, 2), pair(2, 3), pair(3, 4), pair(2, 4)])
    groups = _complete_linkage(pairs)
    for group in groups:
        assert all((a, b) in pairs for i, a in enumerate(group) for b in group[i + 1 :]), groups
    assert sorted(map(sorted, groups)) in ([[1, 2], [3, 4]], [[2, 3, 4]])


@pytest.fixture(scope="module")
def stamped(tmp_path_factory):
    """astronaut, and 40 photos (the halves of 20 others) stamped alike: more than the point index
    verifies for one query (CANDIDATES)."""
    halves = []
    for name in list(load_photos())[7:27]:
        image = Image.open(io.BytesIO(jpeg(name)))
        halves += [image.crop((0, 0, image.width // 2, image.height)), image.crop((image.width // 2, 0, *image.size))]
    assert len(halves) > CANDIDATES
    with Library(tmp_path_factory.mktemp("stamped"), ["local"]) as library:
        library.add(0, jpeg("astronaut"), "astronaut")
        for image_id, half in enumerate(halves, 1):
            library.add(image_id, encode(stamp(half)), f"stamped half {image_id}")
        yield library


def test_a_stamp_many_photos_carry_does_not_outrank_the_original(stamped, monkeypatch):
    """A query stamped like 40 stored photos finds its own unstamped original by local features."""
    query = edited("astronaut", stamp)
    found = stamped.similar_to_image("local", query, k=3)
    assert [hit.image_id for hit in found] == [0], found  # the stamped photos share only the stamp
    # Without setting the shared pattern aside, the stamp alone verifies as a copy of each.
    monkeypatch.setattr(local, "SHARED_IN_IMAGES", 10**6)
    unguarded = stamped.similar_to_image("local", query, k=3)
    assert len(unguarded) == 3 and unguarded[1].score >= 2 * MIN_MATCHES, unguarded


def test_a_stamped_photo_that_is_not_stored_matches_nothing_but_the_stamp_alone_does(stamped, monkeypatch):
    for name in ("chelsea", "coffee"):  # in the library only as the stamp's other carriers are: not at all
        assert stamped.similar_to_image("local", edited(name, stamp), k=3) == [], name
    monkeypatch.setattr(local, "OVERLAY_AT_MOST", 0.0)  # were the stamp the query's own content
    assert len(stamped.similar_to_image("local", edited("chelsea", stamp), k=3)) == 3
    monkeypatch.undo()
    # The stamp cut out of a stamped photo is what the query shows: a crop of that photo, and of each
    # photo carrying it.
    carrier = Image.open(io.BytesIO(encode(stamp(Image.open(io.BytesIO(jpeg("chelsea")))))))
    band = carrier.crop((0, carrier.height * 2 // 5, carrier.width, carrier.height * 3 // 5))
    found = stamped.similar_to_image("local", encode(band), k=5)
    assert len(found) == 5 and all(hit.score >= MIN_MATCHES for hit in found), found


def test_phash_finds_a_quarter_turned_copy(tmp_path):
    with Library(tmp_path, ["phash"]) as library:
        for image_id, name in enumerate(STORED):
            library.add(image_id, jpeg(name), name)
        for turn in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270):
            best, second = library.similar_to_image("phash", edited("chelsea", lambda im: im.transpose(turn)), k=2)
            assert best.image_id == 1 and best.score <= library.engines["phash"].duplicate_threshold < second.score
