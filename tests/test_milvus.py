"""The Milvus index backend in a library and in the service (Milvus Lite in the data directory, as
LOOKALIKE_INDEX_BACKEND=milvus gives it): real photos are found as the FAISS backend finds them, with
the same scores; a library stopped without a checkpoint catches its collections up from the journal;
a library switched from one backend to the other rebuilds; nothing of pymilvus is imported without it.
The contract every Milvus index kind keeps is in test_indexes.py."""

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, crash, ok
from photos import encode

from lookalike.config import Settings
from lookalike.errors import IndexUnavailable
from lookalike.indexes.milvus import MilvusAddress
from lookalike.library import Library
from lookalike.service import create_app

ENGINES = ["phash", "color", "global", "image_text", "local"]
ADDED = 16


def test_without_milvus_nothing_of_it_is_imported():
    code = "import sys, lookalike.cli, lookalike.service; print('pymilvus' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.fixture(scope="module")
def gallery(photos) -> dict[str, bytes]:
    return {name: encode(photos[name].convert("RGB")) for name in sorted(photos)[:ADDED]}


@pytest.fixture(scope="module")
def queries(photos, gallery) -> dict[str, bytes]:
    """A copy of every fourth photo at 70% size."""
    found = {}
    for name in list(gallery)[::4]:
        image = photos[name].convert("RGB")
        found[name] = encode(image.resize((image.width * 7 // 10, image.height * 7 // 10)))
    return found


def filled(data_dir, gallery: dict[str, bytes], milvus: MilvusAddress | None) -> Library:
    library = Library(data_dir, ENGINES, milvus=milvus)
    for image_id, (name, data) in enumerate(gallery.items(), start=1):
        library.add(image_id, data, file_name=f"{name}.jpg")
    return library


def answers(library: Library, queries: dict[str, bytes]) -> dict:
    return {
        (engine, name): [(hit.image_id, round(hit.score, 4)) for hit in library.similar_to_image(engine, data, k=5)]
        for engine in ENGINES
        for name, data in queries.items()
    }


@pytest.fixture(scope="module")
def faiss_answers(tmp_path_factory, gallery, queries) -> dict:
    with filled(tmp_path_factory.mktemp("faiss"), gallery, None) as library:
        return answers(library, queries)


def test_real_photos_are_found_as_faiss_finds_them(tmp_path, gallery, queries, faiss_answers):
    with filled(tmp_path, gallery, MilvusAddress()) as library:
        assert (tmp_path / "indexes" / "milvus.db").exists()
        assert answers(library, queries) == faiss_answers
        for name in queries:  # each copy's own photo first in every engine
            own = list(gallery).index(name) + 1
            assert all(faiss_answers[(engine, name)][0][0] == own for engine in ("phash", "global", "local"))
        assert {library.indexes.stats(engine)["indexed"] for engine in ENGINES} == {ADDED}


def test_a_library_stopped_without_a_checkpoint_catches_up(tmp_path, gallery, queries, faiss_answers, caplog):
    first, rest = dict(list(gallery.items())[:10]), dict(list(gallery.items())[10:])
    library = filled(tmp_path, first, MilvusAddress())
    library.checkpoint()
    for image_id, (name, data) in enumerate(rest.items(), start=11):
        library.add(image_id, data, file_name=f"{name}.jpg")
    library.delete(3)
    library.add(3, gallery[list(gallery)[2]], file_name=f"{list(gallery)[2]}.jpg")
    crash(library)
    library.milvus.close()
    caplog.set_level("INFO", "lookalike.indexes.manager")
    with Library(tmp_path, ENGINES, milvus=MilvusAddress()) as reopened:
        assert "catching up 7 changed images" in caplog.text
        assert answers(reopened, queries) == faiss_answers


def test_a_switch_of_backend_rebuilds(tmp_path, gallery, queries, faiss_answers, caplog):
    filled(tmp_path, gallery, None).close()
    caplog.set_level("WARNING", "lookalike.indexes.manager")
    with Library(tmp_path, ENGINES, milvus=MilvusAddress()) as library:
        assert "rebuilt 16 features" in caplog.text
        assert answers(library, queries) == faiss_answers
        library.delete(1)
    with Library(tmp_path, ENGINES) as library:  # back: the FAISS files are of an older point of the journal
        assert library.indexes.stats("phash")["indexed"] == ADDED - 1
        assert 1 not in [hit.image_id for hit in library.similar_to_image("phash", gallery[list(gallery)[0]], k=3)]


def test_the_service_serves_from_milvus_when_asked(tmp_path, gallery, queries, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_INDEX_BACKEND", "milvus")
    settings = Settings(data_dir=tmp_path, engines=["phash", "color", "global"])
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        for image_id, (name, data) in enumerate(list(gallery.items())[:8], start=1):
            ok(
                client.post("/images", data={"image_id": image_id, "file_name": f"{name}.jpg"}, files={"image": data}),
                201,
            )
        stats = ok(client.get("/stats"))
        assert stats["engines"]["global"]["milvus"] == "HNSW" and stats["engines"]["phash"]["indexed"] == 8
        name = list(queries)[0]
        found = ok(client.post("/search", files={"image": queries[name]}))
        assert found["hits"][0]["image_id"] == 1 and found["hits"][0]["verdict"] == "near_duplicate"
        exact = ok(client.post("/search", files={"image": gallery[name]}))
        assert exact["hits"][0]["verdict"] == "exact"


def test_a_milvus_out_of_reach_is_named_and_leaves_the_library_closed(tmp_path):
    with pytest.raises(IndexUnavailable, match="Milvus at http://127.0.0.1:9: Fail connecting"):
        Library(tmp_path, ["phash"], milvus=MilvusAddress("http://127.0.0.1:9"))
    with Library(tmp_path, ["phash"]) as library:  # the data directory is free again
        assert library.indexes.stats("phash")["indexed"] == 0


def test_milvus_settings_are_checked():
    assert Settings().milvus_address() is None
    address = Settings(index_backend="milvus", milvus_uri="http://milvus:19530", milvus_token="root:Milvus")
    assert address.milvus_address() == MilvusAddress("http://milvus:19530", "root:Milvus", "lookalike_")
    with pytest.raises(ValueError, match="milvus_prefix"):
        Settings(index_backend="milvus", milvus_prefix="no spaces")
    with pytest.raises(ValueError, match="index_backend"):
        Settings(index_backend="qdrant")
