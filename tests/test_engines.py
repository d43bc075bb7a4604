"""One contract over every engine, plus each engine's own reference checks, on real photos.

Every engine also has a golden value: what it extracts from one fixed photo (scikit-image's astronaut,
as PNG), recorded when its features were last meant to change. A change of decoding, preprocessing or
model export that moves a feature fails here before it silently splits a library into two kinds of
feature. To change a feature on purpose, print the new values with `python tests/test_engines.py`
and say in the commit that stored libraries must be re-indexed.
"""

import io
import sys

import numpy as np
import pytest
import scipy.fft
import skimage.data
from conftest import MODELS_DIR
from helpers import TEXT_QUERIES, MemorySource
from photos import encode
from PIL import Image, ImageEnhance, ImageOps
from words_in_photos import with_its_word

from lookalike.decode import decode
from lookalike.engines import ENGINES, TextSearchable, create_engine, decode_for_engine
from lookalike.engines.color import SIDE
from lookalike.errors import InvalidRequest
from lookalike.features import Keypoints, TextLines
from lookalike.indexes import IndexSetup, index_kind
from lookalike.indexes.words import words

MAX_PIXELS = 200_000_000
# The astronaut's feature in each engine, as `golden` summarises it (see the module docstring).
GOLDEN = {
    "phash": "c2d69d9276a44c9fc1550ecb322873bd9014ddb1bac09b6dcc15a0b60add6b255eb5e28e9cf3174a51a2b50a9d67ac14fa5a6ed"
    "438b57ecd486cd6bf9ce794521b4a011eb094ad78",
    "color": {"top": [0, 438, 365, 474], "values": [0.17766, 0.08703, 0.07937, 0.05212], "sum": 1.0},
    "local": {"keypoints": 200, "first_xy": [358.352, 442.445, 310.912, 443.784], "descriptor_sum": 861663},
    "global": {"top": [309, 1226, 15, 41], "values": [0.16282, 0.16229, 0.15259, 0.14382], "sum": 20.91866},
    "image_text": {"top": [141, 1, 99, 102], "values": [0.16529, 0.14189, 0.1258, 0.12297], "sum": -0.2368},
    "tags": {"top": [794, 450, 560, 860], "values": [0.31288, 0.29422, 0.24264, 0.19074], "sum": 23.62929},
    "text": [["Harbour", 1.0]],
    # The tiny random BLIP's (tests/tiny_captioner.py): no captioning weights can be downloaded here.
    "captions": [["w35 w8 w35 w35 w35", 1.0]],
    "caption_embedding": {"top": [27, 364, 330, 107], "values": [0.16697, 0.15862, 0.13573, 0.12745], "sum": -0.27473},
}
# Engines that run the tiny random captioner: what it says of a photo means nothing, so the checks of
# what a real model's features do (a smaller copy stays near, another photo stays far) skip them.
CAPTIONED = {"captions", "caption_embedding"}


def engine_options(name: str, request) -> dict | None:
    """The options the contract creates an engine with: the shared models, the tiny captioner."""
    if name in ("phash", "color"):
        return None
    if name in CAPTIONED:
        return {"models_dir": MODELS_DIR, "model": request.getfixturevalue("tiny_captioner")}
    return {"models_dir": MODELS_DIR}


def photo_for(engine, photos, name: str) -> Image.Image:
    """The photo; for an engine that reads text, with a word in it, as a sign in the photo would be."""
    return with_its_word(photos[name], name) if engine.spec.kind == "text" else photos[name]


def golden_photo(engine) -> bytes:
    buffer = io.BytesIO()
    photo_for(engine, {"astronaut": Image.fromarray(skimage.data.astronaut())}, "astronaut").save(buffer, "PNG")
    return buffer.getvalue()


def golden(engine) -> object:
    """A summary of the golden photo's feature, to compare with a tolerance that survives CPU dispatch."""
    feature = engine.extract(decode_for_engine(engine, golden_photo(engine)))
    if isinstance(feature, TextLines):
        return [[line.text, round(line.confidence, 2)] for line in feature]
    if isinstance(feature, Keypoints):
        return {
            "keypoints": len(feature),
            "first_xy": feature.xy[:2].ravel().round(3).tolist(),
            "descriptor_sum": int(feature.descriptors.astype(np.int64).sum()),
        }
    if engine.spec.kind == "binary":
        return bytes(feature).hex()
    top = np.argsort(-feature)[:4]
    return {"top": top.tolist(), "values": feature[top].round(5).tolist(), "sum": round(float(feature.sum()), 5)}


def features(engine, image: Image.Image) -> np.ndarray:
    return engine.extract(decode_for_engine(engine, encode(image)))


def distance(engine, a: np.ndarray, b: np.ndarray) -> float:
    if engine.spec.metric == "hamming":
        return int(np.unpackbits(a ^ b).sum())
    if engine.spec.metric == "ip":
        return 1.0 - float(a @ b)
    return float(np.abs(a - b).sum())


def same_image(engine, a, b) -> bool:
    """Whether the engine takes two features for one image: within its threshold, or verified matches."""
    if engine.spec.kind == "points":
        return engine.verify(a, b).count > 0
    if engine.spec.kind == "text":  # one's words all among the other's (a smaller copy loses small print)
        ours, theirs = set(words(a.text)), set(words(b.text))
        return bool(ours and theirs) and (ours <= theirs or theirs <= ours)
    return distance(engine, a, b) <= engine.duplicate_threshold


def equal(a, b) -> bool:
    if isinstance(a, Keypoints):
        return np.array_equal(a.xy, b.xy) and np.array_equal(a.descriptors, b.descriptors)
    if isinstance(a, TextLines):
        return a == b
    return np.array_equal(a, b)


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    return create_engine(request.param, engine_options(request.param, request))


def real_model_only(engine) -> None:
    if engine.name in CAPTIONED:
        pytest.skip("what a caption says is a real captioner's to show; its weights cannot be downloaded here")


class TestEveryEngine:
    def test_feature_matches_its_spec(self, engine, photos):
        feature = features(engine, photo_for(engine, photos, "astronaut"))
        if engine.spec.kind == "text":
            assert isinstance(feature, TextLines) and len(feature) >= 1
        elif engine.spec.kind == "points":
            assert feature.descriptors.shape == (len(feature), engine.spec.dim) and len(feature) >= 100
            assert feature.xy.shape == (len(feature), 2)
        else:
            assert feature.shape == (engine.spec.width,)
        if engine.spec.kind != "text":
            assert (feature.descriptors if engine.spec.kind == "points" else feature).dtype == engine.spec.dtype
        assert equal(engine.spec.decode(engine.spec.encode(feature)), feature)

    def test_resized_copy_stays_within_the_duplicate_threshold(self, engine, photos):
        real_model_only(engine)
        for name in ["astronaut", "coffee", "pexels-1317558"]:
            original = photo_for(engine, photos, name)
            smaller = original.resize((original.width // 2, original.height // 2), Image.Resampling.LANCZOS)
            assert same_image(engine, features(engine, original), features(engine, smaller))

    def test_different_photos_are_not_the_same(self, engine, photos):
        real_model_only(engine)
        astronaut = features(engine, photo_for(engine, photos, "astronaut"))
        for other in ["coffee", "chelsea", "pexels-1317558"]:
            assert not same_image(engine, astronaut, features(engine, photo_for(engine, photos, other)))

    def test_query_variants_start_with_the_feature(self, engine, photos):
        image = decode_for_engine(engine, encode(photo_for(engine, photos, "chelsea")))
        assert equal(engine.query_variants(image)[0], engine.extract(image))

    def test_golden_value(self, engine):
        found, expected = golden(engine), GOLDEN[engine.name]
        if isinstance(expected, str | list):
            assert found == expected
        elif "keypoints" in expected:
            assert found["keypoints"] == expected["keypoints"]
            assert found["first_xy"] == pytest.approx(expected["first_xy"], abs=0.05)
            assert found["descriptor_sum"] == pytest.approx(expected["descriptor_sum"], rel=1e-3)
        else:
            assert found["top"] == expected["top"]
            assert found["values"] == pytest.approx(expected["values"], abs=1e-4)
            assert found["sum"] == pytest.approx(expected["sum"], abs=1e-3)

    def test_a_batch_gives_what_one_at_a_time_gives(self, engine, photos):
        images = [decode_for_engine(engine, encode(photo_for(engine, photos, n))) for n in ["rocket", "pexels-2560067"]]
        batch = engine.extract_many(images)
        assert len(batch) == 2
        for together, alone in zip(batch, [engine.extract(image) for image in images]):
            if isinstance(alone, Keypoints | TextLines):
                assert equal(together, alone)
            else:
                assert np.allclose(together, alone, atol=1e-5)

    def test_every_engine_has_a_golden_value_and_a_text_query_if_it_reads_text(self):
        assert set(GOLDEN) == set(ENGINES)
        assert set(TEXT_QUERIES) == {name for name, engine in ENGINES.items() if issubclass(engine, TextSearchable)}

    def test_unknown_engine_is_refused_by_name(self):
        with pytest.raises(ValueError, match="unknown engine 'nope'.*phash"):
            create_engine("nope")


@pytest.fixture(params=sorted(TEXT_QUERIES))
def text_engine(request):
    return create_engine(request.param, engine_options(request.param, request))


class TestEveryTextSearchableEngine:
    def test_a_text_finds_the_photo_it_names_among_others(self, text_engine, photos, tmp_path):
        names = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "pexels-2560067"]
        stored = {i: features(text_engine, photo_for(text_engine, photos, name)) for i, name in enumerate(names)}
        index = index_kind(text_engine.spec).build(IndexSetup(MemorySource(text_engine.spec, stored), tmp_path / "x"))
        text, photo = TEXT_QUERIES[text_engine.name]
        query = text_engine.embed_text(text)
        assert equal(text_engine.spec.decode(text_engine.spec.encode(query)), query), "a query is a feature"
        assert names[index.search([query], k=1)[0].image_id] == photo

    def test_an_empty_text_is_refused(self, text_engine):
        with pytest.raises(InvalidRequest):
            text_engine.embed_text("   ")


def reference_phash(data: bytes) -> np.ndarray:
    """The plain definition: full decode, grey, 96x96 Lanczos, DCT-II on axis 0 then 1, 24x24 vs median."""
    image = decode(data)
    grey = np.asarray(image.convert("L").resize((96, 96), Image.Resampling.LANCZOS), dtype=np.float64)
    coefficients = scipy.fft.dct(scipy.fft.dct(grey, type=2, axis=0), type=2, axis=1)[:24, :24]
    return np.packbits(coefficients > np.median(coefficients))


class TestPHash:
    def test_fast_path_stays_within_8_bits_of_the_reference_on_every_photo(self, photos):
        engine = create_engine("phash")
        for name, photo in photos.items():
            data = encode(photo)
            fast = engine.extract(decode_for_engine(engine, data))
            assert fast.shape == (72,)
            assert distance(engine, fast, reference_phash(data)) <= 8, name

    def test_transformed_copies_find_their_original_at_rank_1(self, library, photos):
        for image_id, photo in enumerate(photos.values()):
            library.add(image_id, encode(photo))
        names = list(photos)
        # transform -> whether the copy also stays within the duplicate threshold. A 5% crop moves
        # the 576-bit hash by 67 bits (median over these photos): found first, but not always "the same".
        transforms = {
            "jpeg q30": (lambda im: encode(im, "JPEG", quality=30), True),
            "quarter size": (lambda im: encode(im.resize((im.width // 4, im.height // 4))), True),
            "mirror": (lambda im: encode(ImageOps.mirror(im)), True),
            "colour shift": (lambda im: encode(ImageEnhance.Color(im).enhance(1.6)), True),
            "5% crop": (lambda im: encode(_crop_area(im, 0.05)), False),
        }
        for image_id, photo in enumerate(photos.values()):
            for transform_name, (transform, within_threshold) in transforms.items():
                best = library.similar_to_image("phash", transform(photo), k=1)[0]
                assert best.image_id == image_id, (names[image_id], transform_name)
                if within_threshold:
                    assert best.score <= 64, (names[image_id], transform_name, best.score)

    def test_unrelated_photos_stay_beyond_the_threshold(self, library, photos):
        for image_id, photo in enumerate(photos.values()):
            library.add(image_id, encode(photo))
        for image_id in range(len(photos)):
            nearest_other = library.similar_to_id("phash", image_id, k=1)[0]
            assert nearest_other.score > 64

    def test_variants_are_the_mirrored_and_turned_hashes(self, photos):
        engine = create_engine("phash")
        image = decode_for_engine(engine, encode(photos["rocket"]))
        plain, mirrored, *turned = engine.query_variants(image)
        assert np.array_equal(mirrored, engine.extract(ImageOps.mirror(image)))
        turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
        for variant, turn in zip(turned, turns):
            assert distance(engine, variant, engine.extract(image.transpose(turn))) <= 8
        assert all(distance(engine, plain, other) > 64 for other in (mirrored, *turned))


class TestColor:
    def test_histogram_is_normalised(self, photos):
        histogram = features(create_engine("color"), photos["coffee"])
        assert histogram.min() >= 0 and histogram.sum() == pytest.approx(1.0, abs=1e-5)

    def test_small_decode_barely_moves_the_histogram(self, photos):
        engine = create_engine("color")
        assert engine.decode_side == SIDE
        small, full = [], []
        for photo in photos.values():
            data = encode(photo)
            small.append(engine.extract(decode_for_engine(engine, data)))
            pixels = np.asarray(decode(data)).reshape(-1, 3) >> 5
            counts = np.bincount(pixels[:, 0].astype(int) * 64 + pixels[:, 1] * 8 + pixels[:, 2], minlength=512)
            full.append(counts / len(pixels))
        small, full = np.array(small), np.array(full)
        shifts = np.abs(small - full).sum(axis=1)
        between_photos = np.abs(full[:, None] - full[None]).sum(axis=2)[np.triu_indices(len(full), 1)]
        assert shifts.max() < 0.06 and shifts.mean() < 0.02
        assert np.median(between_photos) > 20 * shifts.mean()


def _crop_area(image: Image.Image, fraction: float) -> Image.Image:
    """Cut `fraction` of the area away, evenly from every side."""
    margin = (1 - np.sqrt(1 - fraction)) / 2
    dx, dy = round(image.width * margin), round(image.height * margin)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


if __name__ == "__main__":  # print every engine's golden value, to record a deliberate change
    import tempfile
    from pathlib import Path

    from tiny_captioner import install_tiny_captioner, saved_tiny_blip

    tiny = install_tiny_captioner(saved_tiny_blip(Path(tempfile.mkdtemp())), MODELS_DIR)
    for name in ENGINES:
        options = None if name in ("phash", "color") else {"models_dir": MODELS_DIR}
        found = create_engine(name, options | {"model": tiny} if name in CAPTIONED else options)
        print(f"{name!r}: {golden(found)!r},", file=sys.stdout)
