"""Scene tags from Places365: CSAIL's ResNet-50 trained on the 365 scene categories of the Places2 data set
(http://places2.csail.mit.edu, github.com/CSAILVision/places365), downloaded on first use.

The checkpoint is the one the Places365 demo loads (run_placesCNN_basic.py): a torch file holding
{'epoch', 'arch', 'state_dict', ...} whose state dict has torchvision's resnet50 key names prefixed with
'module.' (it was trained under DataParallel). The network is rebuilt here with those key names, so no
torchvision is needed, loaded with weights_only=True (tensors, numbers and strings, no code), exported to
ONNX once and run on ONNX Runtime."""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelUnavailable
from .download import RemoteWeights, fetch_weights
from .runtime import exported, open_session, softmax

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the demo's Normalize: the network was trained on these
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET50_BLOCKS = (3, 4, 6, 3)

BATCH = 16  # images per run: bounds the memory of a long list

# The category files at a fixed commit of CSAILVision/places365, not master, so their sha256s stay true.
PLACES365_REVISION = "8a953ed56438726dc98bdef3796d042e7f1f171e"
_FILES = f"https://raw.githubusercontent.com/CSAILVision/places365/{PLACES365_REVISION}"


@dataclass(frozen=True)
class PlacesWeights:
    """A Places365 ResNet's files and the preprocessing it was trained with.

    `blocks` and `width` shape the network (ResNet-50's by default); `resize` is the square the image is
    squashed to before the centre `side` x `side` crop, as in the Places365 demo."""

    name: str
    checkpoint: RemoteWeights  # torch checkpoint: a state dict, or {'state_dict': ...}, 'module.' prefix or not
    categories: RemoteWeights  # categories_places365.txt: "/a/airfield 0", one category a line, in class order
    indoor_outdoor: RemoteWeights  # IO_places365.txt: "/a/airfield 2", 1 indoor, 2 outdoor, same order
    classes: int = 365
    side: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    blocks: tuple[int, int, int, int] = RESNET50_BLOCKS
    width: int = 64


# The sha256s are those other projects pin for these URLs: the checkpoint's in Sijie-Yang/urbancode
# (urbancode/streetview/data/places365_manifest.json), AtaraxyEcho/OmniNest (deploy/ai-sidecar/app.py) and a
# course project's README; the category file's in the same urbancode manifest and rlsgarcia-code/PanorAi
# (panorai/experimental/deep_learning/classification.py, pinned to this commit, 6,833 bytes); IO_places365.txt's
# in an ImageAll admission spec, and it is the sha256 of the file as stored at this commit. The category file
# rebuilt from the IO file's names (no final newline) has exactly the pinned sha256, so the three agree.
PLACES365 = PlacesWeights(
    name="places365-resnet50",
    checkpoint=RemoteWeights(
        "places365-resnet50",
        "http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar",
        "46529c86902bd0cfb0ea562a30b2850c28d2620d96282b3db9c318e1d774f6c5",
        "places365/resnet50_places365.pth.tar",
    ),
    categories=RemoteWeights(
        "places365 categories",
        f"{_FILES}/categories_places365.txt",
        "2affba635eb657e7ca95f4e6cc69bd9fac29ef4c32aeb83cafdfcd06ec6a1ea6",
        "places365/categories_places365.txt",
        6_833,
    ),
    indoor_outdoor=RemoteWeights(
        "places365 indoor/outdoor",
        f"{_FILES}/IO_places365.txt",
        "49f8c7fbeeb70deb055c040a1807a95b234bbac92902e1b6edfffbdd8411e1f1",
        "places365/IO_places365.txt",
    ),
)


class SceneClassifier:
    """Probabilities over the 365 Places categories, on ONNX Runtime."""

    def __init__(self, weights: PlacesWeights, onnx_path: Path, categories: Path, indoor_outdoor: Path):
        self.weights = weights
        paths = read_categories(categories, weights)
        self.labels: list[str] = [readable(path) for path in paths]
        # True where the category is outdoor; probabilities @ outdoor is the outdoor probability mass.
        self.outdoor: np.ndarray = read_outdoor(indoor_outdoor, paths, weights)
        self._session = open_session(onnx_path)
        self._mean = np.array(weights.mean, np.float32)
        self._std = np.array(weights.std, np.float32)

    def classify(self, images: list[Image.Image]) -> np.ndarray:
        """(n, classes) float32, each row a softmax over the categories."""
        rows = [self._probabilities(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
        return np.concatenate(rows) if rows else np.zeros((0, self.weights.classes), np.float32)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(3, side, side) float32 as the Places365 demo: squashed to resize x resize (bilinear), the centre
        side x side square, [0, 1], ImageNet's mean and std."""
        resize, side = self.weights.resize, self.weights.side
        image = image.convert("RGB").resize((resize, resize), Image.Resampling.BILINEAR)
        offset = int(round((resize - side) / 2))  # torchvision's CenterCrop
        image = image.crop((offset, offset, offset + side, offset + side))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        return ((pixels - self._mean) / self._std).transpose(2, 0, 1)

    def _probabilities(self, images: list[Image.Image]) -> np.ndarray:
        (logits,) = self._session.run(None, {"image": np.stack([self.preprocess(image) for image in images])})
        return softmax(logits)


def load_places(weights: PlacesWeights, models_dir: Path, progress: bool = True) -> SceneClassifier:
    """The classifier, its files downloaded into models_dir and verified, and exported to ONNX, the first time.

    Once the ONNX file exists the checkpoint is not needed (nor hashed) again."""
    models_dir = Path(models_dir)
    categories = fetch_weights(weights.categories, models_dir, progress)
    indoor_outdoor = fetch_weights(weights.indoor_outdoor, models_dir, progress)
    # Named after the checkpoint's hash: a new checkpoint is exported anew, never served by an old export.
    onnx_path = models_dir / f"{weights.name}-{weights.checkpoint.sha256[:12]}.onnx"
    if not onnx_path.exists():
        # Fetched here, not inside the export: both take the models directory's lock.
        checkpoint = fetch_weights(weights.checkpoint, models_dir, progress)
        exported(onnx_path, lambda path: _export(weights, checkpoint, path))
    return SceneClassifier(weights, onnx_path, categories, indoor_outdoor)


def readable(category: str) -> str:
    """ "/b/bakery/shop" -> "bakery shop": the letter folder dropped, '/' and '_' to spaces."""
    return category.split("/", 2)[-1].replace("/", " ").replace("_", " ")


def read_categories(path: Path, weights: PlacesWeights) -> list[str]:
    """The category paths ("/a/airfield") in class order, checked against their indices."""
    lines = _lines(path, weights)
    paths = []
    for expected, parts in enumerate(lines):
        if len(parts) != 2 or not parts[0].startswith("/") or parts[1] != str(expected):
            raise _bad_file(path, weights, f"line {expected + 1} is not '<category> {expected}'")
        paths.append(parts[0])
    if len(paths) != weights.classes:
        raise _bad_file(path, weights, f"it lists {len(paths)} categories, not {weights.classes}")
    return paths


def read_outdoor(path: Path, categories: list[str], weights: PlacesWeights) -> np.ndarray:
    """(classes,) bool, True for the outdoor categories (2), False for the indoor ones (1)."""
    lines = _lines(path, weights)
    if [parts[0] for parts in lines] != categories or any(len(p) != 2 or p[1] not in ("1", "2") for p in lines):
        raise _bad_file(path, weights, "it does not flag each category, in order, 1 (indoor) or 2 (outdoor)")
    return np.array([parts[1] == "2" for parts in lines])


def _lines(path: Path, weights: PlacesWeights) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad_file(path, weights, str(exc)) from exc


def _bad_file(path: Path, weights: PlacesWeights, reason: str) -> ModelUnavailable:
    return ModelUnavailable(f"model {weights.name!r} cannot use {path}: {reason}")


def resnet(blocks: tuple[int, ...] = RESNET50_BLOCKS, width: int = 64, classes: int = 365):
    """A torch ResNet with bottleneck blocks and torchvision's module names (conv1, bn1, layer1..4 of blocks
    with conv1..3, bn1..3 and downsample.0/.1, fc), so torchvision's resnet50 state dicts load into it:
    ResNet-50 with the defaults. The stride sits on each stage's first 3x3 convolution, as in torchvision."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inplanes != planes * 4:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
                )

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = width
            for stage, count in enumerate(blocks):
                planes = width * 2**stage
                layer = []
                for block in range(count):
                    layer.append(Bottleneck(inplanes, planes, 2 if stage and not block else 1))
                    inplanes = planes * 4
                setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for stage in range(len(blocks)):
                x = getattr(self, f"layer{stage + 1}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def read_state_dict(checkpoint: Path) -> dict:
    """The state dict in a checkpoint that is one, or holds one under 'state_dict'; 'module.' prefixes (from
    DataParallel) dropped. Loaded with weights_only=True: tensors and plain data only, never code."""
    import torch

    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError("it holds no state dict of tensors")
    return {re.sub(r"^module\.", "", key): value for key, value in state.items()}


def _export(weights: PlacesWeights, checkpoint: Path, path: Path) -> None:
    import torch

    network = resnet(weights.blocks, weights.width, weights.classes)
    try:
        # Strict: a missing or unexpected key means the wrong network, not weights to ignore. The 2017
        # checkpoints predate BatchNorm's num_batches_tracked; BatchNorm fills it in for such state dicts.
        network.load_state_dict(read_state_dict(checkpoint), strict=True)
    except Exception as exc:  # unpickling errors, a wrong layout, shapes that do not match
        raise ModelUnavailable(
            f"model {weights.name!r} cannot load the checkpoint {checkpoint} as a ResNet with blocks "
            f"{weights.blocks}, width {weights.width} and {weights.classes} classes: {exc}"
        ) from exc
    network.eval()
    batch = {0: "batch"}
    torch.onnx.export(
        network,
        (torch.zeros(1, 3, weights.side, weights.side),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": batch, "logits": batch},
        dynamo=False,  # the TorchScript exporter needs no onnxscript and handles this network
    )
