"""Places365 scene tags end to end against a tiny Places-like ResNet made here and served over local HTTP: first use
downloads and verifies the checkpoint and the category files, exports the checkpoint to ONNX once, and the
ONNX model classifies the demo's preprocessing of a real photo as the torch network does; a bad checksum or
no network fails with a message that says what to do."""

import hashlib
import re
import string
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR
from photos import encode
from PIL import Image
from test_models import Server, closed_port, files_in

from lookalike.engines import create_engine
from lookalike.engines.tags import SCENE_MODELS
from lookalike.errors import ModelUnavailable
from lookalike.library import Library
from lookalike.models.download import RemoteWeights
from lookalike.models.places import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PLACES365,
    PlacesWeights,
    load_places,
    read_state_dict,
    readable,
    resnet,
)

torch = pytest.importorskip("torch")

CLASSES = 365
BLOCKS = (1, 1, 1, 1)
WIDTH = 4  # the stem's channels; the last stage gives 4 * 8 * 4 = 128 features
# A few real category paths, one or two levels deep; the rest are made up in the same format.
REAL = {0: "/a/airfield", 1: "/b/bakery/shop", 2: "/a/apartment_building/outdoor", 3: "/u/underwater/ocean_deep"}


def category(index: int) -> str:
    return REAL.get(index, f"/{string.ascii_lowercase[index % 26]}/scene_{index:03d}")


def tiny_resnet(seed: int):
    """Random weights and BatchNorm statistics (so folding them into the export matters) and a large fc, so the
    softmax is peaked and a wrong preprocessing or weight would show in the probabilities."""
    torch.manual_seed(seed)
    network = resnet(BLOCKS, WIDTH, CLASSES)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        network.fc.weight.mul_(40)
    return network.eval()


class TinyPlaces:
    """The served files in a folder, and the torch network the checkpoint holds."""

    def __init__(self, root: Path):
        self.root = root
        self.network = tiny_resnet(seed=0)
        # As CSAIL saved it in 2017: the pre-1.6 (not zip) format, a training checkpoint around a DataParallel
        # state dict, whose BatchNorms have no num_batches_tracked yet.
        state = {f"module.{key}": value for key, value in self.network.state_dict().items()}
        state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
        checkpoint = {"epoch": 90, "arch": "resnet50", "state_dict": state, "best_prec1": 54.74}
        torch.save(checkpoint, root / "resnet_places365.pth.tar", _use_new_zipfile_serialization=False)
        # The official files' layout: no final newline in the categories, one in the indoor/outdoor flags.
        paths = [category(i) for i in range(CLASSES)]
        (root / "categories_places365.txt").write_text("\n".join(f"{p} {i}" for i, p in enumerate(paths)))
        (root / "IO_places365.txt").write_text("".join(f"{p} {1 + i % 2}\n" for i, p in enumerate(paths)))

    def weights(self, server_url, **sha256s: str) -> PlacesWeights:
        return served_weights(self.root, server_url, **sha256s)


def served_weights(root: Path, server_url, **sha256s: str) -> PlacesWeights:
    """The tiny model's entry for the files in root as served at server_url(name), their sha256s unless given."""

    def remote(part: str, served: str) -> RemoteWeights:
        sha256 = sha256s.get(part) or hashlib.sha256((root / served).read_bytes()).hexdigest()
        return RemoteWeights(f"places-tiny {part}", server_url(served), sha256, f"places-tiny/{served}")

    return PlacesWeights(
        name="places-tiny",
        checkpoint=remote("checkpoint", "resnet_places365.pth.tar"),
        categories=remote("categories", "categories_places365.txt"),
        indoor_outdoor=remote("indoor_outdoor", "IO_places365.txt"),
        blocks=BLOCKS,
        width=WIDTH,
    )


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyPlaces:
    return TinyPlaces(tmp_path_factory.mktemp("tiny-places"))


@pytest.fixture
def server(tiny):
    server = Server(tiny.root)
    yield server
    server.close()


def reference_preprocess(image: Image.Image) -> np.ndarray:
    """The demo's Resize((256, 256)), CenterCrop(224), ToTensor, Normalize, with the sizes worked out by hand."""
    pixels = np.asarray(image.resize((256, 256), Image.Resampling.BILINEAR).crop((16, 16, 240, 240)), np.float32)
    normalised = (pixels / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return normalised.transpose(2, 0, 1)


def test_load_places_downloads_once_and_classifies_like_the_torch_model(tiny, server, tmp_path, photos):
    weights = tiny.weights(server.url)
    models_dir = tmp_path / "models"

    model = load_places(weights, models_dir, progress=False)
    assert sorted(server.requests) == ["/IO_places365.txt", "/categories_places365.txt", "/resnet_places365.pth.tar"]
    onnx_name = f"places-tiny-{weights.checkpoint.sha256[:12]}.onnx"
    assert files_in(models_dir) == [
        onnx_name,
        "places-tiny/IO_places365.txt",
        "places-tiny/categories_places365.txt",
        "places-tiny/resnet_places365.pth.tar",
    ]

    assert len(model.labels) == CLASSES and len(set(model.labels)) == CLASSES
    assert model.labels[:4] == ["airfield", "bakery shop", "apartment building outdoor", "underwater ocean deep"]
    assert model.labels[10] == "scene 010"
    assert model.outdoor.shape == (CLASSES,) and model.outdoor.dtype == bool
    assert model.outdoor[:4].tolist() == [False, True, False, True]

    images = [photos["chelsea"], photos["coffee"], photos["astronaut"]]
    probabilities = model.classify(images)
    assert probabilities.shape == (3, CLASSES) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5) and (probabilities >= 0).all()
    assert model.classify([]).shape == (0, CLASSES)

    # The demo's preprocessing, then the served torch network: the same probabilities, to the log.
    chelsea = photos["chelsea"]  # 451 x 300: squashed to a square, not cropped to one
    assert np.allclose(model.preprocess(chelsea), reference_preprocess(chelsea), atol=1e-6)
    batch = torch.from_numpy(np.stack([model.preprocess(image) for image in images]))
    with torch.inference_mode():
        expected = torch.log_softmax(tiny.network(batch), dim=1).numpy()
    assert np.allclose(np.log(probabilities), expected, atol=1e-4)
    assert probabilities.max(axis=1).min() > 0.05  # peaked: the comparison above is not of near-uniform rows
    # and the photos are told apart, by far more than that tolerance
    assert np.abs(np.log(probabilities[1:]) - np.log(probabilities[0])).max(axis=1).min() > 0.05

    many = [photos["coffee"]] * 17  # more than one batch
    assert np.allclose(model.classify(many), np.repeat(probabilities[1:2], 17, axis=0), atol=1e-6)

    # A second load finds the verified files and the export: nothing downloaded, the checkpoint not even read.
    (models_dir / "places-tiny" / "resnet_places365.pth.tar").unlink()
    again = load_places(weights, models_dir, progress=False)
    assert len(server.requests) == 3
    assert np.array_equal(again.classify(images[:1]), probabilities[:1])


@pytest.mark.parametrize("layout", ["training checkpoint", "plain", "plain with module. prefix", "zip format"])
def test_read_state_dict_takes_each_checkpoint_layout(tmp_path, layout):
    network = tiny_resnet(seed=1)
    state = network.state_dict()
    prefixed = {f"module.{key}": value for key, value in state.items()}
    saved = {
        "training checkpoint": {"epoch": 1, "arch": "resnet50", "state_dict": prefixed},
        "plain": state,
        "plain with module. prefix": prefixed,
        "zip format": {"state_dict": state},
    }[layout]
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(saved, path, _use_new_zipfile_serialization=layout == "zip format")

    loaded = read_state_dict(path)
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_a_checkpoint_of_another_network_is_refused_by_name(tiny, server, tmp_path):
    wrong = replace(tiny.weights(server.url), blocks=(2, 1, 1, 1))  # one block more than the served network

    with pytest.raises(
        ModelUnavailable, match=r"(?s)'places-tiny' cannot load the checkpoint .*Missing key.*layer1\.1\.conv1"
    ):
        load_places(wrong, tmp_path / "models", progress=False)
    assert not list((tmp_path / "models").glob("*.onnx"))


def test_checksum_mismatch_names_the_model_and_leaves_nothing(tiny, server, tmp_path):
    weights = tiny.weights(server.url, checkpoint="0" * 64)
    models_dir = tmp_path / "models"

    with pytest.raises(ModelUnavailable) as raised:
        load_places(weights, models_dir, progress=False)
    message = raised.value.message
    assert "places-tiny checkpoint" in message and "sha256" in message and "0" * 64 in message
    assert raised.value.status == 503
    # The small category files verified and kept; no checkpoint, no partial file, no export.
    assert files_in(models_dir) == ["places-tiny/IO_places365.txt", "places-tiny/categories_places365.txt"]


def test_offline_names_the_model_and_the_url(tiny, tmp_path):
    port = closed_port()
    weights = tiny.weights(lambda name: f"http://127.0.0.1:{port}/{name}")
    models_dir = tmp_path / "models"

    with pytest.raises(ModelUnavailable) as raised:
        load_places(weights, models_dir, progress=False)
    message = raised.value.message
    assert "places-tiny categories" in message and weights.categories.url in message
    assert str(models_dir / "places-tiny" / "categories_places365.txt") in message
    assert files_in(models_dir) == []


def test_a_category_file_out_of_order_is_refused(tiny, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for name in ("resnet_places365.pth.tar", "IO_places365.txt"):
        (served / name).write_bytes((tiny.root / name).read_bytes())
    lines = (tiny.root / "categories_places365.txt").read_text().splitlines()
    (served / "categories_places365.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]))
    server = Server(served)
    try:
        with pytest.raises(ModelUnavailable, match="'places-tiny' cannot use .*categories_places365.txt: line 1"):
            load_places(served_weights(served, server.url), tmp_path / "models", progress=False)
    finally:
        server.close()


def test_the_places365_resnet50_entry_is_pinned():
    assert PLACES365.classes == 365 and PLACES365.side == 224 and PLACES365.resize == 256
    assert PLACES365.mean == IMAGENET_MEAN and PLACES365.std == IMAGENET_STD
    assert PLACES365.blocks == (3, 4, 6, 3) and PLACES365.width == 64
    files = [PLACES365.checkpoint, PLACES365.categories, PLACES365.indoor_outdoor]
    for remote in files:
        assert re.fullmatch(r"[0-9a-f]{64}|", remote.sha256), remote
    assert PLACES365.checkpoint.url == "http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar"
    raw = r"https://raw\.githubusercontent\.com/CSAILVision/places365/[0-9a-f]{40}/"
    assert re.fullmatch(raw + "categories_places365.txt", PLACES365.categories.url)
    assert re.fullmatch(raw + "IO_places365.txt", PLACES365.indoor_outdoor.url)
    assert len({remote.filename for remote in files}) == 3


def test_the_default_resnet_is_torchvisions_resnet50_layout():
    """ResNet-50 with 365 classes: torchvision's 320 state-dict entries and 24,255,917 parameters (its
    25,557,032 for 1,000 classes, less 635 fc rows of 2,049)."""
    network = resnet(PLACES365.blocks, PLACES365.width, PLACES365.classes)
    state = network.state_dict()
    assert len(state) == 320
    assert sum(p.numel() for p in network.parameters()) == 24_255_917
    batch_norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert [key for key in state if key.startswith("layer2.0.")] == [
        f"layer2.0.{module}.{entry}"
        for module in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1")
        for entry in (("weight",) if module.startswith("conv") or module.endswith(".0") else batch_norm)
    ]
    assert [len(getattr(network, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert state["conv1.weight"].shape == (64, 3, 7, 7) and state["fc.weight"].shape == (365, 2048)
    assert "layer1.0.downsample.0.weight" in state and "layer1.1.downsample.0.weight" not in state
    first = network.layer4[0]  # the stride on the 3x3 convolution, as torchvision's (ResNet v1.5)
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2) and first.downsample[0].stride == (2, 2)


def test_readable_names():
    assert readable("/a/airfield") == "airfield"
    assert readable("/b/bakery/shop") == "bakery shop"
    assert readable("/a/apartment_building/outdoor") == "apartment building outdoor"


def test_the_tags_engine_adds_scene_tags_from_a_downloaded_places_model(tiny, server, tmp_path, photos, monkeypatch):
    """LOOKALIKE_SCENE_TAGS=places365 as a user runs it, through the tiny model: scenes join the ImageNet tags."""
    monkeypatch.setitem(SCENE_MODELS, "places365", tiny.weights(server.url))
    options = {"tags": {"scenes": "places365", "models_dir": MODELS_DIR}}
    with Library(tmp_path / "data", ["tags"], engine_options=options) as library:
        library.prepare()
        tagger = library.engine("tags")
        assert tagger.spec.dim == len(tagger.object_names) + CLASSES
        assert tagger.names[len(tagger.object_names) :][:2] == ["airfield", "bakery shop"]
        for image_id, name in enumerate(["chelsea", "coffee", "astronaut"]):
            library.add(image_id, encode(photos[name]), name)
        feature = library.store.feature("tags", 1)
        assert np.isclose(np.linalg.norm(feature), 1, atol=1e-5)  # both halves together: still a unit vector
        # The ImageNet half is unchanged by the scenes beside it (the tiny Places model knows nothing real).
        assert "espresso" in library.tags_of_id(1)
        scenes = feature[len(tagger.object_names) :] ** 2 * 2
        assert np.isclose(scenes.sum(), 1, atol=1e-4)
        best_scene = tagger.names[len(tagger.object_names) + int(np.argmax(scenes))]
        assert library.similar_to_text("tags", best_scene, k=1)[0].image_id in (0, 1, 2)
    with pytest.raises(ValueError, match="unknown scene model"):
        create_engine("tags", {"scenes": "sun397"})
