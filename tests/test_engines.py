"""One contract over every engine, plus each engine's own reference checks, on real photos."""

import numpy as np
import pytest
import scipy.fft
from conftest import MODELS_DIR
from photos import encode
from PIL import Image, ImageEnhance, ImageOps

from lookalike.decode import decode
from lookalike.engines import ENGINES, Keypoints, create_engine, decode_for
from lookalike.engines.color import SIDE

MAX_PIXELS = 200_000_000


def features(engine, image: Image.Image) -> np.ndarray:
    return engine.extract(decode_for([engine], encode(image), MAX_PIXELS))


def distance(engine, a: np.ndarray, b: np.ndarray) -> float:
    if engine.spec.metric == "hamming":
        return int(np.unpackbits(a ^ b).sum())
    if engine.spec.metric == "ip":
        return 1.0 - float(a @ b)
    return float(np.abs(a - b).sum())


def same_image(engine, a, b) -> bool:
    """Whether the engine takes two features for one image: within its threshold, or verified matches."""
    if engine.spec.kind == "points":
        return engine.verify(a, b) > 0
    return distance(engine, a, b) <= engine.duplicate_threshold


def equal(a, b) -> bool:
    if isinstance(a, Keypoints):
        return np.array_equal(a.xy, b.xy) and np.array_equal(a.descriptors, b.descriptors)
    return np.array_equal(a, b)


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    with_models = request.param not in ("phash", "color")
    return create_engine(request.param, {"models_dir": MODELS_DIR} if with_models else None)


class TestEveryEngine:
    def test_feature_matches_its_spec(self, engine, photos):
        feature = features(engine, photos["astronaut"])
        if engine.spec.kind == "points":
            assert feature.descriptors.shape == (len(feature), engine.spec.dim) and len(feature) >= 100
            assert feature.xy.shape == (len(feature), 2)
        else:
            assert feature.shape == (engine.spec.width,)
        assert (feature.descriptors if engine.spec.kind == "points" else feature).dtype == engine.spec.dtype
        assert equal(engine.spec.decode(engine.spec.encode(feature)), feature)

    def test_resized_copy_stays_within_the_duplicate_threshold(self, engine, photos):
        for name in ["astronaut", "coffee", "pexels-1317558"]:
            original = photos[name]
            smaller = original.resize((original.width // 2, original.height // 2), Image.Resampling.LANCZOS)
            assert same_image(engine, features(engine, original), features(engine, smaller))

    def test_different_photos_are_not_the_same(self, engine, photos):
        for other in ["coffee", "chelsea", "pexels-1317558"]:
            assert not same_image(engine, features(engine, photos["astronaut"]), features(engine, photos[other]))

    def test_query_variants_start_with_the_feature(self, engine, photos):
        image = decode_for([engine], encode(photos["chelsea"]), MAX_PIXELS)
        assert equal(engine.query_variants(image)[0], engine.extract(image))

    def test_unknown_engine_is_refused_by_name(self):
        with pytest.raises(ValueError, match="unknown engine 'nope'.*phash"):
            create_engine("nope")


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
            fast = engine.extract(decode_for([engine], data, MAX_PIXELS))
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
                    assert best.distance <= 64, (names[image_id], transform_name, best.distance)

    def test_unrelated_photos_stay_beyond_the_threshold(self, library, photos):
        for image_id, photo in enumerate(photos.values()):
            library.add(image_id, encode(photo))
        for image_id in range(len(photos)):
            nearest_other = library.similar_to_id("phash", image_id, k=1)[0]
            assert nearest_other.distance > 64

    def test_mirror_variant_is_the_mirrored_hash(self, photos):
        engine = create_engine("phash")
        image = decode_for([engine], encode(photos["rocket"]), MAX_PIXELS)
        plain, mirrored = engine.query_variants(image)
        assert np.array_equal(mirrored, engine.extract(ImageOps.mirror(image)))
        assert distance(engine, plain, mirrored) > 64


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
            small.append(engine.extract(decode_for([engine], data, MAX_PIXELS)))
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
