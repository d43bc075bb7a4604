"""The captions engines on a tiny random BLIP, served from a local HTTP server as a download would be:
the caption stored as a text feature (its words found by the text index), its MiniLM embedding in
text search beside the image-text engine, one captioning per photo for both, the original service's
route and the stored caption's, and an offline server that refuses to start, naming what to install."""

import dataclasses
import re

import numpy as np
import pytest
from conftest import LOCAL_URL
from fastapi.testclient import TestClient
from helpers import error, lookalike, ok, upload
from photos import encode
from test_models import Server, closed_port
from tiny_captioner import FILES, SIDE, saved_tiny_blip, weights_of

from lookalike.config import Settings
from lookalike.engines import decode_for_engine
from lookalike.errors import ModelUnavailable
from lookalike.gateway import DESCRIBED_BY, text_search
from lookalike.library import Library
from lookalike.models.captioners import CAPTION_MODELS, SharedCaptions, load_captioner
from lookalike.service import create_app

# Photos the random model captions apart, in words of its vocabulary ("w35 w8 ..."); it says nothing of some.
NAMES = ["astronaut", "motorcycle_left", "hubble_deep_field", "pexels-36444540"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture
def served(saved, monkeypatch):
    """The tiny BLIP registered as caption model "tiny-blip", downloaded from a local server."""
    server = Server(saved)
    monkeypatch.setitem(CAPTION_MODELS, "tiny-blip", weights_of(saved, server.url))
    yield server
    server.close()


def caption_options(models_dir) -> dict:
    options = {"model": "tiny-blip", "models_dir": models_dir}
    return {"captions": options, "caption_embedding": options}


def test_captions_are_stored_searched_by_word_and_by_meaning(served, tmp_path, photos, monkeypatch):
    models_dir = tmp_path / "models"
    engines = ["phash", "image_text", "captions", "caption_embedding"]
    with Library(tmp_path / "data", engines, engine_options=caption_options(models_dir)) as library:
        library.prepare()  # downloads here, before any image
        assert sorted(served.requests) == [f"/{name}" for name in sorted(FILES)]
        shared = library.engine("captions").captioner
        assert library.engine("caption_embedding").captioner is shared
        runs = []
        monkeypatch.setattr(
            shared.captioner,
            "caption",
            lambda images, run=shared.captioner.caption: runs.append(len(images)) or run(images),
        )
        data = {name: encode(photos[name]) for name in NAMES}
        for image_id, name in enumerate(NAMES):
            library.add(image_id, data[name], name)
        assert runs == [1, 1, 1, 1]  # one captioning a photo, for both engines

        # What is stored is what the exported model says of the image the engine decodes.
        reference = load_captioner(CAPTION_MODELS["tiny-blip"], models_dir)
        captions = {}
        for image_id, name in enumerate(NAMES):
            stored = library.feature_of_id("captions", image_id)
            image = decode_for_engine(library.engine("captions"), data[name])
            assert image.size[0] >= SIDE and image.size[1] >= SIDE
            assert stored.text == reference.caption([image])[0]
            captions[name] = stored.text
        assert len(set(captions.values())) == len(NAMES), captions  # the random model tells them apart
        assert all(re.fullmatch(r"(w\d+ ?)+", caption) for caption in captions.values()), captions

        # Words of a caption find it through the text index; its sentence finds it by meaning.
        for image_id, name in enumerate(NAMES):
            by_words = library.similar_to_text("captions", captions[name])
            assert by_words[0].image_id == image_id and by_words[0].score == max(hit.score for hit in by_words)
            by_meaning = library.similar_to_text("caption_embedding", captions[name], k=1)
            assert by_meaning[0].image_id == image_id and by_meaning[0].score < 1e-4

        # Text search: the better of image_text's and the caption's similarity, with every list beside.
        found = text_search(library, captions["motorcycle_left"], k=4)
        assert set(found.found) == {"image_text", "captions", "caption_embedding"}
        assert found.hits[0].image_id == NAMES.index("motorcycle_left") and found.hits[0].similarity > 0.9999
        for hit in found.hits:
            assert hit.similarity == max(score for engine, score in hit.engines.items() if engine in DESCRIBED_BY)
        assert [hit.similarity for hit in found.hits] == sorted((hit.similarity for hit in found.hits), reverse=True)
        feature = library.feature_of_id("caption_embedding", 0)
        assert feature.shape == (384,) and abs(float(np.linalg.norm(feature)) - 1) < 1e-5


def test_the_service_captions_uploads_and_stored_photos(served, tmp_path, photos):
    assert Settings(caption_model="tiny-blip").engines[-2:] == ["captions", "caption_embedding"]  # turned on by it
    engines = ["phash", "text", "captions", "caption_embedding"]
    settings = Settings(data_dir=tmp_path / "service", engines=engines, caption_model="tiny-blip")
    astronaut, motorcycle = encode(photos["astronaut"]), encode(photos["motorcycle_left"])
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        caption = ok(upload(client, "/get_image_caption", astronaut))
        assert isinstance(caption, str) and re.fullmatch(r"(w\d+ ?)+", caption)
        ok(upload(client, "/images", astronaut, image_id=1), 201)
        assert ok(client.get("/images/1/caption")) == caption
        assert ok(client.get("/images/1/text")) == []  # the OCR engine's, apart

        ok(upload(client, "/images", motorcycle, image_id=2, defer_slow="true"), 201)
        answer = client.get("/images/2/caption")
        if answer.status_code == 404:  # unless the background pass was quicker
            assert "background pass" in error(answer, 404)
        found = ok(client.post("/search_text", json={"text": caption, "k": 2}))
        assert found["hits"][0]["image_id"] == 1 and found["hits"][0]["engines"]["caption_embedding"] > 0.9999
        assert found["found"]["captions"][0]["image_id"] == 1
        found = ok(client.post("/engines/captions/search_text", json={"text": caption, "k": 1}))
        assert found[0]["image_id"] == 1
        assert error(client.post("/search_text", json={"text": ""}), 422)
        assert error(upload(client, "/get_image_caption", b"not an image"), 400)


def test_without_its_files_the_caption_model_refuses_to_start_naming_them(tmp_path, monkeypatch):
    offline = f"http://127.0.0.1:{closed_port()}"
    blip = CAPTION_MODELS["blip-base"]
    moved = [dataclasses.replace(f, url=f"{offline}/{f.filename}") for f in blip.files]
    monkeypatch.setitem(
        CAPTION_MODELS, "blip-base", dataclasses.replace(blip, checkpoint=moved[0], config=moved[1], tokenizer=moved[2])
    )
    settings = Settings(data_dir=tmp_path / "service", engines=["phash", "captions"], caption_model="blip-base")
    with pytest.raises(ModelUnavailable) as raised, TestClient(create_app(settings), base_url=LOCAL_URL):
        pass
    message = raised.value.message
    assert "`lookalike models install blip-base --from DIR`" in message
    for file in blip.files:
        assert f"{file.size:,} bytes" in message and file.sha256 in message
    assert "989,820,849 bytes" in message


def test_serve_without_the_caption_model_says_why_and_exits(tmp_path):
    env = {"LOOKALIKE_CAPTION_MODEL": "blip-base", "LOOKALIKE_ENGINES": '["phash", "captions"]', "HTTPS_PROXY": f"http://127.0.0.1:{closed_port()}",
           "https_proxy": f"http://127.0.0.1:{closed_port()}", "NO_PROXY": ""}  # fmt: skip
    done = lookalike(tmp_path / "data", "serve", "--port", "1", env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert (
        "caption model 'blip-base' is not installed" in said and "lookalike models install blip-base --from DIR" in said
    )
    assert "Traceback" not in said


def test_shared_captions_caption_each_living_image_once(photos):
    """Two batches in turn (two background threads), each captioned by both engines: each image once."""
    runs = []

    class Counting:
        def caption(self, images):
            runs.append(len(images))
            return [f"w{image.width}" for image in images]

    shared = SharedCaptions(Counting())
    first = [photos["astronaut"].copy(), photos["coffee"].copy()]
    second = [photos["rocket"].copy()]
    assert shared.caption(first) == ["w512", "w600"]
    assert shared.caption(second) == ["w640"]
    assert shared.caption(first) == ["w512", "w600"] and shared.caption(second) == ["w640"]
    assert runs == [2, 1]
    del first  # gone: a new image object is captioned anew, even one of the same pixels
    assert shared.caption([photos["astronaut"].copy()]) == ["w512"] and runs == [2, 1, 1]
