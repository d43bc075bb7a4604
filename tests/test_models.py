"""Weights download against a real local HTTP server: success and caching, bad checksum, offline, HTTP errors,
concurrent callers, and HardNet8 loading exactly the weights it was served; installing a model's files from a
folder (`lookalike models install NAME --from DIR`), for a server that cannot download them."""

import functools
import hashlib
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import lookalike

from lookalike.errors import ModelUnavailable
from lookalike.models import RemoteWeights, fetch_weights, registry


class Server:
    """Serves files from a folder on 127.0.0.1 and counts the requests it answers."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, format, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    return root


@pytest.fixture
def server(served):
    server = Server(served)
    yield server
    server.close()


@pytest.fixture
def models_dir(tmp_path) -> Path:
    return tmp_path / "models"


def serve(served: Path, server: Server, name: str, content: bytes, sha256: str | None = None) -> RemoteWeights:
    (served / name).write_bytes(content)
    return RemoteWeights("tiny", server.url(name), sha256 or hashlib.sha256(content).hexdigest(), name)


def leftovers(models_dir: Path) -> list[str]:
    """Everything in models_dir but the lock file, which stays on purpose (deleting a lock file races)."""
    return sorted(p.name for p in models_dir.iterdir() if p.name != ".lock")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_downloads_once_then_uses_the_cached_file(served, server, models_dir):
    content = bytes(range(256)) * 1000
    weights = serve(served, server, "tiny.bin", content)

    path = fetch_weights(weights, models_dir, progress=True)
    assert path == models_dir / "tiny.bin"
    assert path.read_bytes() == content
    assert leftovers(models_dir) == ["tiny.bin"]
    assert fetch_weights(weights, models_dir) == path
    assert server.requests == ["/tiny.bin"]


def test_a_corrupt_cached_file_is_replaced(served, server, models_dir):
    content = b"the real weights" * 100
    weights = serve(served, server, "tiny.bin", content)
    models_dir.mkdir()
    (models_dir / "tiny.bin").write_bytes(content[:-1])  # a truncated copy from some earlier install

    assert fetch_weights(weights, models_dir, progress=False).read_bytes() == content
    assert server.requests == ["/tiny.bin"]


def test_checksum_mismatch_leaves_nothing_behind(served, server, models_dir):
    weights = serve(served, server, "tiny.bin", b"tampered", sha256="0" * 64)

    with pytest.raises(ModelUnavailable) as raised:
        fetch_weights(weights, models_dir, progress=False)
    message = raised.value.message
    assert "sha256" in message and "0" * 64 in message and hashlib.sha256(b"tampered").hexdigest() in message
    assert raised.value.status == 503
    assert leftovers(models_dir) == []


def test_offline_says_how_to_install_by_hand(models_dir):
    weights = RemoteWeights("tiny", f"http://127.0.0.1:{closed_port()}/tiny.bin", "a" * 64, "tiny.bin")

    with pytest.raises(ModelUnavailable) as raised:
        fetch_weights(weights, models_dir, progress=False)
    message = raised.value.message
    assert "'tiny'" in message and weights.url in message and str(models_dir / "tiny.bin") in message
    assert "a" * 64 in message
    assert leftovers(models_dir) == []


def test_http_error_says_how_to_install_by_hand(server, models_dir):
    weights = RemoteWeights("tiny", server.url("missing.bin"), "a" * 64, "tiny.bin")

    with pytest.raises(ModelUnavailable) as raised:
        fetch_weights(weights, models_dir, progress=False)
    message = raised.value.message
    assert "404" in message and "'tiny'" in message and str(models_dir / "tiny.bin") in message
    assert leftovers(models_dir) == []


def test_a_weights_entry_without_a_real_hash_is_refused(server, models_dir):
    weights = RemoteWeights("tiny", server.url("tiny.bin"), "unknown", "tiny.bin")

    with pytest.raises(ModelUnavailable, match="sha256"):
        fetch_weights(weights, models_dir, progress=False)
    assert server.requests == []


def test_concurrent_callers_download_once(served, server, models_dir):
    weights = serve(served, server, "tiny.bin", b"x" * 3_000_000)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch_weights(weights, models_dir, progress=False)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [models_dir / "tiny.bin"] * 4
    assert server.requests == ["/tiny.bin"]


def random_hardnet8(seed: int):
    import torch
    from kornia.feature import HardNet8

    torch.manual_seed(seed)
    return HardNet8(pretrained=False).eval()


def test_hardnet8_describes_with_the_served_weights(served, server, models_dir):
    torch = pytest.importorskip("torch")
    pytest.importorskip("kornia")
    import cv2
    from kornia.feature import extract_patches_from_pyramid, laf_from_center_scale_ori
    from skimage.data import astronaut

    from lookalike.engines.describers.base import quantize_unit
    from lookalike.engines.describers.hardnet import MEASUREMENT_REGION, HardNet8Describer

    served_model = random_hardnet8(seed=0)
    torch.save(served_model.state_dict(), served / "hardnet8.pt")  # kornia's format: a plain state dict
    checkpoint = (served / "hardnet8.pt").read_bytes()
    weights = RemoteWeights("hardnet8-test", server.url("hardnet8.pt"), hashlib.sha256(checkpoint).hexdigest(), "h8.pt")

    describer = HardNet8Describer(models_dir, weights)
    grey = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
    keypoints = list(cv2.SIFT_create(nfeatures=50).detect(grey, None))
    descriptors = describer.describe(grey, keypoints)

    assert descriptors.shape == (len(keypoints), 128) and len(keypoints) >= 40
    assert descriptors.dtype == np.uint8
    assert len(np.unique(descriptors, axis=0)) > len(keypoints) // 2
    assert np.array_equal(describer.describe(grey, keypoints), descriptors)
    assert describer.describe(grey, []).shape == (0, 128)

    # The same patches through the served model, and through another one: only the first must agree.
    image = torch.from_numpy(grey.astype(np.float32) / 255)[None, None]
    lafs = laf_from_center_scale_ori(
        torch.tensor([kp.pt for kp in keypoints])[None],
        torch.tensor([MEASUREMENT_REGION * kp.size for kp in keypoints]).view(1, -1, 1, 1),
        torch.tensor([-kp.angle for kp in keypoints]).view(1, -1, 1),
    )
    with torch.inference_mode():
        patches = extract_patches_from_pyramid(image, lafs, 32)[0]
        expected = quantize_unit(served_model(patches).numpy())
        other = quantize_unit(random_hardnet8(seed=1)(patches).numpy())
    assert np.array_equal(descriptors, expected)
    assert not np.array_equal(descriptors, other)
    assert server.requests == ["/hardnet8.pt"]


def test_importing_hardnet_does_not_import_torch():
    import os
    import subprocess
    import sys

    code = (
        "import sys, lookalike.engines.describers.hardnet; "
        "assert 'torch' not in sys.modules and 'kornia' not in sys.modules"
    )
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def files_in(models_dir: Path) -> list[str]:
    """Every file under models_dir but the lock, which stays on purpose."""
    return sorted(str(p.relative_to(models_dir)) for p in models_dir.rglob("*") if p.is_file() and p.name != ".lock")


# -- installing from a folder ----------------------------------------------------------------------


@pytest.fixture
def offline_model(tmp_path, monkeypatch) -> tuple[dict[str, bytes], tuple[RemoteWeights, ...]]:
    """A model of two files that cannot be downloaded (its URLs point at a closed port), registered as 'tiny'."""
    contents = {"encoder.onnx": b"encoder weights" * 999, "tokenizer.json": b'{"tokens": []}'}
    url = f"http://127.0.0.1:{closed_port()}/tiny-repo"
    files = tuple(
        RemoteWeights(
            f"tiny {name}", f"{url}/{name}", hashlib.sha256(content).hexdigest(), f"tiny/{name}", len(content)
        )
        for name, content in contents.items()
    )
    monkeypatch.setitem(registry.MODELS, "tiny", files)
    return contents, files


def test_a_model_installed_from_a_folder_is_used_without_downloading(tmp_path, models_dir, offline_model):
    contents, files = offline_model
    brought = tmp_path / "brought"
    brought.mkdir()
    for name, content in contents.items():
        (brought / name).write_bytes(content)

    installed = registry.install_model("tiny", brought, models_dir)
    assert installed == [models_dir / "tiny" / name for name in contents]
    assert files_in(models_dir) == ["tiny/encoder.onnx", "tiny/tokenizer.json"]
    for weights, content in zip(files, contents.values()):
        assert fetch_weights(weights, models_dir, progress=False).read_bytes() == content  # no network needed
        assert registry.installed(weights, models_dir)
    assert registry.install_model("tiny", brought, models_dir) == []  # already there: nothing to do


def test_installing_checks_every_file_before_copying_any(tmp_path, models_dir, offline_model):
    contents, _ = offline_model
    brought = tmp_path / "brought"
    brought.mkdir()
    (brought / "encoder.onnx").write_bytes(contents["encoder.onnx"])

    with pytest.raises(ModelUnavailable) as raised:
        registry.install_model("tiny", brought, models_dir)
    message = raised.value.message
    assert "lacks 1 of model 'tiny'" in message and "tokenizer.json (14 bytes, sha256" in message
    assert not models_dir.exists() or files_in(models_dir) == []


def test_a_file_with_the_wrong_checksum_is_not_installed(tmp_path, models_dir, offline_model):
    contents, _ = offline_model
    brought = tmp_path / "brought" / "tiny"  # the models directory's own layout is found too
    brought.mkdir(parents=True)
    (brought / "encoder.onnx").write_bytes(contents["encoder.onnx"][:-1])
    (brought / "tokenizer.json").write_bytes(contents["tokenizer.json"])

    with pytest.raises(ModelUnavailable) as raised:
        registry.install_model("tiny", brought.parent, models_dir)
    assert "wrong sha256" in raised.value.message and str(brought / "encoder.onnx") in raised.value.message
    assert "tiny/encoder.onnx" not in files_in(models_dir)


def test_offline_names_the_install_command(models_dir, offline_model):
    _, files = offline_model
    with pytest.raises(ModelUnavailable) as raised:
        fetch_weights(files[0], models_dir, progress=False)
    message = raised.value.message
    assert "`lookalike models install tiny --from DIR`" in message and "14,985 bytes" in message


def test_the_install_command_names_what_a_folder_lacks(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = lookalike(tmp_path / "data", "models", "install", "clip-vit-b32", "--from", str(empty))
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    for name, size in (
        ("visual.onnx", "351,613,724"),
        ("textual.onnx", "254,193,396"),
        ("tokenizer.json", "3,642,073"),
    ):
        assert f"{name} ({size} bytes, sha256" in said, said
    unknown = lookalike(tmp_path / "data", "models", "install", "no-such-model", "--from", str(empty))
    assert unknown.returncode == 1 and "clip-vit-b32" in unknown.stderr
    listed = lookalike(tmp_path / "data", "models", "list")
    assert listed.returncode == 0 and "places365-resnet50" in listed.stdout and "hardnet8v2" in listed.stdout
