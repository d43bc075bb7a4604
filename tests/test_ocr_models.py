"""The text engine's OCR models: the shipped one needs no network, and other sizes come through the
model registry (checksum, first-use download, clear errors), never through rapidocr's own downloader."""

import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_models import Server, closed_port, files_in
from words_in_photos import Lettering, render

from lookalike.engines import create_engine
from lookalike.errors import ModelUnavailable
from lookalike.models.download import RemoteWeights
from lookalike.models.ocr import OCR_MODELS, OcrModel, TextReader, _has_alphabet, shipped_file

SHIPPED = OCR_MODELS["pp-ocrv6-small"]


@pytest.fixture(scope="module")
def sign(photos):
    return render(photos["coffee"], Lettering("Espresso Bar", 36), random.Random(1))


def read(reader: TextReader, image) -> list[str]:
    return [line.text for line in reader.read(image).lines]


def test_the_shipped_model_reads_with_the_network_off(tmp_path, sign, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the text engine tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    engine = create_engine("text", {"models_dir": tmp_path / "models"})
    engine.prepare()
    assert [line.text for line in engine.extract(sign)] == ["Espresso Bar"]
    assert not (tmp_path / "models").exists(), "nothing is downloaded or copied"
    assert _has_alphabet(shipped_file(SHIPPED.recognizer)), "the engine trusts the wheel's recogniser to carry it"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1) here")
def test_the_shipped_model_reads_in_a_process_without_a_network(tmp_path, sign):
    sign.save(tmp_path / "sign.png")
    script = (
        "import sys; from PIL import Image; from lookalike.engines import create_engine; "
        f"e = create_engine('text', {{'models_dir': {str(tmp_path / 'models')!r}}}); "
        f"print([l.text for l in e.extract(Image.open({str(tmp_path / 'sign.png')!r}).convert('RGB'))])"
    )
    done = subprocess.run(["unshare", "-rn", sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip(f"this machine does not allow a network namespace: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['Espresso Bar']"


@pytest.fixture
def served(tmp_path) -> Path:
    (tmp_path / "served").mkdir()
    return tmp_path / "served"


@pytest.fixture
def server(served):  # as tests/test_places.py's: one local server per test
    server = Server(served)
    yield server
    server.close()


def served_copy(served: Path, weights: RemoteWeights, server: Server, sha256: str | None = None) -> RemoteWeights:
    """The shipped file under another name on a local server, as a registry entry for it."""
    name = f"copy-{Path(weights.filename).name}"
    shutil.copy(shipped_file(weights), served / name)
    return RemoteWeights(f"copy of {weights.name}", server.url(name), sha256 or weights.sha256, f"ocr/{name}")


def test_a_registry_model_is_downloaded_once_verified_and_reads_as_the_shipped_one(tmp_path, served, server, sign):
    model = OcrModel(
        "copy", served_copy(served, SHIPPED.detector, server), served_copy(served, SHIPPED.recognizer, server)
    )
    models_dir = tmp_path / "models"
    downloaded = TextReader(model, models_dir, 640)
    assert read(downloaded, sign) == read(TextReader(SHIPPED, models_dir, 640), sign) == ["Espresso Bar"]
    assert sorted(files_in(models_dir / "ocr")) == ["copy-PP-OCRv6_det_small.onnx", "copy-PP-OCRv6_rec_small.onnx"]
    assert len(server.requests) == 2
    TextReader(model, models_dir, 640).load()  # a second start reads the verified copies
    assert len(server.requests) == 2


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(tmp_path, served, server):
    wrong = served_copy(served, SHIPPED.detector, server, sha256="0" * 64)
    model = OcrModel("wrong", wrong, SHIPPED.recognizer)
    with pytest.raises(ModelUnavailable, match="wrong sha256"):
        TextReader(model, tmp_path / "models", 640).load()
    assert files_in(tmp_path / "models" / "ocr") == []


def test_offline_the_error_says_what_to_download_and_where(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/PP-OCRv6_det_medium.onnx"
    model = OcrModel("offline", RemoteWeights("det", url, "1" * 64, "ocr/det.onnx"), SHIPPED.recognizer)
    with pytest.raises(ModelUnavailable) as refused:
        TextReader(model, tmp_path / "models", 640).load()
    assert url in str(refused.value) and str(tmp_path / "models" / "ocr" / "det.onnx") in str(refused.value)


def test_an_unknown_model_is_refused_at_start():
    with pytest.raises(ValueError, match="unknown OCR model 'nope'.*pp-ocrv6-small"):
        create_engine("text", {"model": "nope"})
