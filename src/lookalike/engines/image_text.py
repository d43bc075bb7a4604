"""Image-text features: photos and text queries embedded in one space ("a dog on a beach").

Two spaces are offered. `clip-vit-b32` is a real CLIP (ONNX, downloaded on first use). The default,
`imagenet-minilm`, needs no download: an image becomes the classifier's probabilities over the 1,000
ImageNet classes mixed over sentence embeddings (all-MiniLM-L6-v2) of the class names, so a text
query, embedded by the same sentence model, lands near photos of the classes it describes. It knows
only what ImageNet names: objects and animals, few scenes, no colours, counts or actions.
"""

from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from ..errors import InvalidRequest
from ..features import FeatureSpec
from ..models.classifier import CLASSIFIERS, image_classifier, imagenet_class_texts
from ..models.clip import CLIP_MODELS, load_clip
from ..models.runtime import exported, unit_rows
from ..models.text import DIM as TEXT_DIM
from ..models.text import TextEncoder, text_encoder
from .base import Engine, EngineOptions, TextSearchable, known_name

OFFLINE_SPACE = "imagenet-minilm"
CLASSIFIER = "efficientnet-lite2"
MAX_TEXT_CHARACTERS = 1_000


class ImageTextOptions(EngineOptions):
    model: str = Field(OFFLINE_SPACE, validation_alias="image_text_model")

    @field_validator("model")
    @classmethod
    def known(cls, model: str) -> str:
        return known_name(model, [OFFLINE_SPACE, *CLIP_MODELS], "image-text model")


class ImageText(Engine, TextSearchable):
    name = "image_text"
    Options = ImageTextOptions
    duplicate_threshold = 0.02

    def __init__(self, options: ImageTextOptions | None = None):
        super().__init__(options)
        model = self.options.model
        dim = TEXT_DIM if model == OFFLINE_SPACE else CLIP_MODELS[model].dim
        self.spec = FeatureSpec("float", dim, "ip", model=model)
        self.decode_side = CLASSIFIERS[CLASSIFIER].side if model == OFFLINE_SPACE else CLIP_MODELS[model].image_size

    @cached_property
    def space(self):
        if self.options.model == OFFLINE_SPACE:
            return ClassNameSpace(self.options.models_dir)
        return load_clip(CLIP_MODELS[self.options.model], self.options.models_dir)

    def prepare(self) -> None:
        self.space

    def extract(self, image: Image.Image) -> np.ndarray:
        return self.extract_many([image])[0]

    def extract_many(self, images: list[Image.Image]) -> list[np.ndarray]:
        return list(self.space.embed_images(images))

    def embed_text(self, text: str) -> np.ndarray:
        return self.space.embed_texts([sentence(text)])[0]


def sentence(text: str) -> str:
    """A typed query to embed as a sentence, its surrounding blanks trimmed."""
    text = text.strip()
    if not text or len(text) > MAX_TEXT_CHARACTERS:
        raise InvalidRequest(f"text must have 1 to {MAX_TEXT_CHARACTERS} characters")
    return text


class ClassNameSpace:
    """The offline image-text space: ImageNet class probabilities over sentence embeddings of the class names."""

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self._classifier = image_classifier(CLASSIFIER, models_dir)
        path = models_dir / f"imagenet-classes-{TextEncoder.name}.npy"
        if not path.exists():
            self._text  # exported first, outside the class vectors' export: both take the models lock
        self._class_vectors = np.load(exported(path, self._embed_class_names))

    @cached_property
    def _text(self) -> TextEncoder:
        # Loaded only for text: bulk-indexing workers embed images alone, and the model costs ~170 MiB.
        return text_encoder(self.models_dir)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        mixed = self._classifier.classify(images).probabilities @ self._class_vectors
        return unit_rows(mixed)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._text.embed(texts)

    def _embed_class_names(self, path: Path) -> None:
        # Name and description together: "a photo of a Egyptian Mau" alone is far from "a cat"
        # (bench/text_search_recall.py measures the choice).
        names, descriptions = imagenet_class_texts()
        vectors = self._text.embed([f"a photo of a {name}" for name in names]) + self._text.embed(descriptions)
        with open(path, "wb") as file:
            np.save(file, vectors.astype(np.float32))
