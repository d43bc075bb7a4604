"""docs/ARCHITECTURE.md's "Adding an engine", done: an engine defined here, registered with one line,
is served by every route, stored, indexed, saved and reloaded, with nothing else written for it.

It is a text engine, so it also proves the text feature kind and its index end to end: an image's
feature is the names of the colours that cover much of it, and a typed colour name finds the images.
"""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, ok
from photos import encode
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app as cli
from lookalike.config import Settings
from lookalike.engines import ENGINES, Engine, TextSearchable
from lookalike.errors import InvalidRequest
from lookalike.features import FeatureSpec, TextLine, TextLines
from lookalike.service import create_app

PALETTE = {
    "red": (200, 30, 30), "green": (40, 160, 60), "blue": (40, 60, 200), "yellow": (230, 210, 40),
    "white": (245, 245, 245), "black": (15, 15, 15), "brown": (120, 80, 40), "grey": (128, 128, 128),
}  # fmt: skip
MIN_SHARE = 0.15


class ColourWords(Engine, TextSearchable):
    """The names of the palette colours nearest to at least MIN_SHARE of the pixels, most first."""

    name = "colour_words"
    spec = FeatureSpec("text", 0, "words")
    decode_side = 32
    duplicate_threshold = 0.0

    def extract(self, image: Image.Image) -> TextLines:
        pixels = np.asarray(image.convert("RGB").resize((32, 32)), np.float32).reshape(-1, 1, 3)
        nearest = np.argmin(((pixels - np.array(list(PALETTE.values()), np.float32)) ** 2).sum(axis=2), axis=1)
        shares = np.bincount(nearest, minlength=len(PALETTE)) / len(nearest)
        names = list(PALETTE)
        return TextLines(
            tuple(TextLine(names[i], float(shares[i])) for i in np.argsort(-shares) if shares[i] >= MIN_SHARE)
        )

    def embed_text(self, text: str) -> TextLines:
        if not text.strip():
            raise InvalidRequest("name a colour")
        return TextLines((TextLine(text),))


def flag(*colours: str) -> Image.Image:
    """Vertical bands of palette colours."""
    bands = np.concatenate([np.tile(np.array(PALETTE[c], np.uint8), (120, 60, 1)) for c in colours], axis=1)
    return Image.fromarray(bands)


IMAGES = {1: flag("red", "white"), 2: flag("blue", "yellow"), 3: flag("red", "blue", "green"), 4: flag("black")}


def upload(client, url: str, image: Image.Image, **form):
    data = encode(image, "PNG")
    return client.post(url, files={"image": ("flag.png", data, "image/png")}, data={k: str(v) for k, v in form.items()})


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ENGINES, ColourWords.name, ColourWords)  # the one line a new engine adds


@pytest.fixture
def settings(tmp_path, registered):
    return Settings(data_dir=tmp_path / "data", engines=["phash", "colour_words"])


def ids(hits: list) -> list[int]:
    return [hit["image_id"] for hit in hits]


def test_a_registered_engine_is_served_by_every_route(settings):
    with TestClient(create_app(settings), base_url=LOCAL_URL, raise_server_exceptions=False) as client:
        ok(upload(client, "/images", IMAGES[1], image_id=1, file_name="flag-1"), 201)
        ok(upload(client, "/engines/colour_words/images", IMAGES[2], image_id=2), 201)
        ok(upload(client, "/calculate_colour_words_features", IMAGES[3], image_id=3))
        ok(upload(client, "/images", IMAGES[4], image_id=4), 201)
        stats = ok(client.get("/stats"))["engines"]["colour_words"]
        assert stats["features"] == stats["indexed"] == 4 and stats["words"] == 6  # red white blue yellow green black

        red = ok(client.post("/engines/colour_words/search_text", json={"text": "red", "k": 10}))
        assert sorted(ids(red)) == [1, 3] and all(set(hit) == {"image_id", "relevance", "file_name"} for hit in red)
        assert red[[hit["image_id"] for hit in red].index(1)]["file_name"] == "flag-1"
        original = ok(client.post("/colour_words_get_similar_images_by_text", json={"text": "red", "k": 10}))
        assert original == red
        assert ids(ok(client.post("/engines/colour_words/search_text", json={"text": "Blue", "k": 1}))) in ([2], [3])

        for url in ("/engines/colour_words/search", "/colour_words_get_similar_images_by_image_buffer"):
            assert ids(ok(upload(client, url, IMAGES[3], k=1))) == [3], url
        assert ids(ok(upload(client, "/reverse_search", IMAGES[3]))["colour_words"])[0] == 3
        by_id = ok(client.get("/engines/colour_words/images/3/similar", params={"k": 3}))
        assert 3 not in ids(by_id) and set(ids(by_id)) <= {1, 2}  # they share red or blue
        assert ok(client.post("/colour_words_get_similar_images_by_id", json={"image_id": 3, "k": 3})) == by_id
        # A relevance engine takes min_relevance; the original names take any cutoff as distance_threshold.
        best = ok(upload(client, "/engines/colour_words/search", IMAGES[1], k=1))[0]["relevance"]
        assert ids(ok(upload(client, "/engines/colour_words/search", IMAGES[1], min_relevance=best))) == [1]
        buffer = "/colour_words_get_similar_images_by_image_buffer"
        assert ids(ok(upload(client, buffer, IMAGES[1], distance_threshold=best))) == [1]
        error(upload(client, "/engines/colour_words/search", IMAGES[1], distance_threshold=best), 422)

        assert ok(client.delete("/engines/colour_words/images/1"))["deleted_from"] == ["colour_words"]
        deleted = ok(client.post("/delete_colour_words_features", json={"image_id": 3}))
        assert deleted["deleted_from"] == ["colour_words"]
        assert ids(ok(client.post("/engines/colour_words/search_text", json={"text": "red", "k": 10}))) == []
        paths = ok(client.get("/openapi.json"))["paths"]
        assert "colour_words" in paths["/calculate_colour_words_features"]["post"]["tags"][0]
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:  # saved at shutdown, loaded at start
        assert ok(client.get("/stats"))["engines"]["colour_words"] == {
            "features": 2,
            "indexed": 2,
            "words": 3,
            "model": None,
        }
        assert ids(ok(client.post("/engines/colour_words/search_text", json={"text": "yellow", "k": 5}))) == [2]


def test_the_command_line_serves_it_too(settings, tmp_path):
    folder = tmp_path / "flags"
    folder.mkdir()
    for image_id, image in IMAGES.items():
        image.save(folder / f"{image_id}.png")
    env = {"LOOKALIKE_DATA_DIR": str(settings.data_dir), "LOOKALIKE_ENGINES": '["colour_words"]'}
    indexed = CliRunner().invoke(cli, ["index", str(folder), "--workers", "1"], env=env)
    assert indexed.exit_code == 0, indexed.output
    found = CliRunner().invoke(cli, ["search", "--text", "green", "--engine", "colour_words", "--json"], env=env)
    assert found.exit_code == 0, found.output
    assert '"image_id": 3' in found.stdout and '"image_id": 1' not in found.stdout
