"""The local features engine on real photos: keypoint capping and spreading, XFeat descriptors, finding
crops, the box in its scene, graf, mirror images and images without keypoints, and the store refusing
another descriptor setting.

The gallery and the crops' queries are shared with test_point_index.py (see local_gallery.py).
"""

import numpy as np
import pytest
from local_gallery import (
    SAMPLES,
    TEXTURED,
    crop_results,
    crops,
    flat_images,
    found_ids,
    ids,
    misses_of,
    photos,
    sample_png,
    small,
    small_crop,
    stored,
)
from photos import encode
from PIL import Image, ImageOps

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
from lookalike.errors import StoreVersionError
from lookalike.indexes.points import MIN_TRAINING_POINTS
from lookalike.library import Library

MIRRORED = ["astronaut", "pexels-2560067", "pexels-4543103"]


# -- finding things ----------------------------------------------------------------------------------


def test_the_gallery_is_what_the_tests_assume(local_gallery):
    stats = local_gallery.stats()["engines"]["local"]
    assert stats["features"] == stats["indexed"] == len(photos()) + len(SAMPLES) == 69
    assert stats["trained_on"] == 0
    assert stats["descriptors"] >= MIN_TRAINING_POINTS, "training tests need this many descriptors"


def test_the_box_is_found_in_its_scene(local_gallery):
    found = local_gallery.similar_to_image("local", sample_png("box.png"), k=5)
    assert found, "box.png found nothing"
    assert found[0].image_id == ids()["box_in_scene.png"] and found[0].file_name == "box_in_scene.png", found
    assert found[0].score >= MIN_MATCHES and found[0].measure == "matches"


def test_a_copy_keeps_its_matches_precise_and_another_view_does_not():
    """What tells a copy from another shot of the same thing: a cropped and turned copy's matches sit
    where one similarity transform puts them, while graf3 (the same wall seen from elsewhere) and aloeR
    (the other camera of a stereo pair) fit a homography without being precise."""
    engine = create_engine("local")
    for name in ["pexels-2560067", "astronaut", "chelsea"]:
        copy = small_crop(name).rotate(7, Image.Resampling.BICUBIC, expand=True)
        matches = engine.verify(engine.extract(copy), engine.extract(small(name)))
        assert matches.count >= 2 * MIN_MATCHES and matches.precise >= 0.9 * matches.count, (name, matches)
    for view, other in [("graf3.png", "graf1.png"), ("aloeR.jpg", "aloeL.jpg")]:
        matches = engine.verify(engine.extract(small(view)), engine.extract(small(other)))
        assert matches.count >= 2 * MIN_MATCHES and matches.precise <= matches.count / 4, (view, matches)


def test_graf3_finds_graf1_and_graf1_finds_graf3(local_gallery, tmp_path):
    found = local_gallery.similar_to_image("local", sample_png("graf3.png"), k=5)
    assert found and found[0].image_id == ids()["graf1.png"], found
    assert found[0].score >= 2 * MIN_MATCHES
    # The reverse: graf3 stored among other photos, graf1 the query.
    with Library(tmp_path, ["local"]) as library:
        library.add_many(stored(local_gallery, ["box_in_scene.png", "leuvenA.jpg", "astronaut", "pexels-2416933"]))
        library.add(1, sample_png("graf3.png"), "graf3.png")
        found = library.similar_to_image("local", sample_png("graf1.png"), k=5)
        assert found and (found[0].image_id, found[0].file_name) == (1, "graf3.png"), found
        assert found[0].score >= 2 * MIN_MATCHES


def test_a_30_percent_crop_finds_its_original_first(local_gallery, crop_queries):
    results = crop_results(local_gallery, crop_queries)
    misses = misses_of(results)
    print(f"flat index: {len(results) - len(misses)} of {len(results)} crops found first; missed {misses}")
    assert len(photos()) == 46
    assert len(misses) <= 0.1 * len(results), f"{len(misses)} of {len(results)} crops missed: {misses}"
    assert not misses.keys() & set(TEXTURED), misses
    for name, found in results.items():
        if name not in misses:
            assert found[0][1] >= MIN_MATCHES
            assert [m for _, m in found] == sorted((m for _, m in found), reverse=True), found


def test_mirrored_finds_a_mirrored_crop(local_gallery):
    for name in MIRRORED:
        query = encode(ImageOps.mirror(crops()[name]))
        with_mirror = local_gallery.similar_to_image("local", query, k=3, mirrored=True)
        assert with_mirror and with_mirror[0].image_id == ids()[name], (name, with_mirror)
        assert with_mirror[0].score >= 2 * MIN_MATCHES, (name, with_mirror)
        # SIFT is not mirror-invariant: without the mirrored variant the original is not verified at all.
        without = local_gallery.similar_to_image("local", query, k=3)
        assert ids()[name] not in found_ids(without), (name, without)
    # Mirroring the query does not lose an unmirrored crop.
    plain = local_gallery.similar_to_image("local", encode(crops()["chelsea"]), k=1, mirrored=True)
    assert found_ids(plain) == [ids()["chelsea"]]


def test_an_image_without_keypoints_is_stored_and_searched(local_gallery, tmp_path):
    engine = local_gallery.engines["local"]
    for name, image in flat_images().items():
        keypoints = engine.extract(image)
        assert len(keypoints) == 0 and keypoints.descriptors.shape == (0, 128), name
        assert keypoints.xy.shape == (0, 2)
        assert local_gallery.similar_to_image("local", encode(image, "PNG"), k=5) == []
        assert local_gallery.similar_to_image("local", encode(image, "PNG"), threshold=0, mirrored=True) == []
    with Library(tmp_path, ["local"]) as library:
        assert library.similar_to_image("local", encode(photos()["astronaut"]), k=5) == []  # empty library
        library.add(1, encode(flat_images()["grey"], "PNG"), "grey.png")
        assert library.similar_to_image("local", encode(photos()["astronaut"]), k=5) == []  # no descriptors at all
        library.add(2, encode(flat_images()["gradient"], "PNG"), "gradient.png")
        library.add_many(stored(local_gallery, ["astronaut"]))
        stats = library.stats()["engines"]["local"]
        assert stats["features"] == stats["indexed"] == 3
        assert stats["descriptors"] == len(local_gallery.store.feature("local", ids()["astronaut"]))
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


# -- the store -------------------------------------------------------------------------------------


def test_another_descriptor_setting_is_refused_by_name(local_gallery, tmp_path):
    with Library(tmp_path, ["local"]) as library:
        library.add_many(stored(local_gallery, ["astronaut"]))
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
    assert engine.verify(crop, original).count >= MIN_MATCHES
    assert engine.verify(crop, other).count == 0
