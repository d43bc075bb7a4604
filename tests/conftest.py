import os
import sys
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
# One models directory for the whole run (subprocesses included): each model is exported once.
MODELS_DIR = Path(os.environ.setdefault("LOOKALIKE_MODELS_DIR", tempfile.mkdtemp(prefix="lookalike-models-")))

# The local engine's gallery, shared by test_local_engine.py and test_point_index.py: fixtures defined
# here are built once per session, not once per module that imports them (the build takes a minute).
from helpers import LOCAL_URL  # noqa: E402
from local_gallery import crop_queries, local_gallery, local_gallery_dir  # noqa: E402, F401
from photos import photos as load_photos  # noqa: E402

from lookalike.config import Settings  # noqa: E402
from lookalike.library import Library  # noqa: E402
from lookalike.service import create_app  # noqa: E402


@pytest.fixture(scope="session")
def photos():
    return load_photos()


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> str:
    """The caption model the tests run (`tiny_captioner.py`), installed in MODELS_DIR; its name."""
    from tiny_captioner import install_tiny_captioner, saved_tiny_blip

    return install_tiny_captioner(saved_tiny_blip(tmp_path_factory.mktemp("tiny-blip")), MODELS_DIR)


@pytest.fixture
def library(tmp_path):
    with Library(tmp_path / "data", ["phash", "color"]) as library:
        yield library


# The distance engines: every stored image comes back at some distance. The local engine returns only
# verified matches; tests/test_local_engine.py covers it, tests/test_local_service.py in the service.
DISTANCE_ENGINES = ["phash", "color"]


@pytest.fixture
def settings(tmp_path):
    return Settings(
        data_dir=tmp_path / "service", engines=DISTANCE_ENGINES, max_upload_bytes=5 * 2**20, max_pixels=40_000_000
    )


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        yield client
