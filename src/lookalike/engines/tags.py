"""Tags: the ImageNet classes a classifier is confident of, optionally Places365 scenes, stored per
image and searchable.

The feature is the square root of the probability of each (uniquely named) class, from the forward
pass the global features engine runs anyway. Square roots make it a unit vector whose inner product
with another image's is the Bhattacharyya coefficient of their class distributions (1 for the same
photo), while a tag query, the indicator of the tags it names, still ranks images by those tags'
probabilities. With scenes, the two distributions' vectors are concatenated and scaled by 1/sqrt(2).
"""

from functools import cached_property

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from ..errors import InvalidRequest
from ..features import FeatureSpec
from ..models.classifier import CLASSIFIERS, ClassifierName, ImageClassifier, image_classifier, imagenet_labels
from ..models.places import PLACES365, SceneClassifier, load_places
from .base import Engine, EngineOptions, TextSearchable, known_name

MIN_PROBABILITY = 0.2  # below this the classifier is more often wrong than right on photos
MAX_TAGS = 5
MAX_SCENE_TAGS = 2
SCENE_MODELS = {"places365": PLACES365}


class TagsOptions(EngineOptions):
    model: ClassifierName = Field("efficientnet-lite2", validation_alias="global_model")  # the global engine's
    scenes: str = Field("off", validation_alias="scene_tags")

    @field_validator("scenes")
    @classmethod
    def known(cls, scenes: str) -> str:
        return known_name(scenes, ["off", *SCENE_MODELS], "scene model")


class Tags(Engine, TextSearchable):
    name = "tags"
    Options = TagsOptions
    duplicate_threshold = 0.05  # 1 - Bhattacharyya coefficient: halving a photo moved it by at most 0.014

    def __init__(self, options: TagsOptions | None = None):
        super().__init__(options)
        self.object_names, self._name_of_class = imagenet_labels()
        scenes = self.options.scenes
        scene_classes = SCENE_MODELS[scenes].classes if scenes != "off" else 0
        self.spec = FeatureSpec("float", len(self.object_names) + scene_classes, "ip", model=self._model_name())
        self.decode_side = CLASSIFIERS[self.options.model].side

    @cached_property
    def classifier(self) -> ImageClassifier:
        return image_classifier(self.options.model, self.options.models_dir)

    @cached_property
    def scene_classifier(self) -> SceneClassifier | None:
        scenes = self.options.scenes
        return load_places(SCENE_MODELS[scenes], self.options.models_dir) if scenes != "off" else None

    @property
    def names(self) -> list[str]:
        """Every tag, in the order of the feature's elements."""
        return self.object_names + (self.scene_classifier.labels if self.scene_classifier else [])

    def prepare(self) -> None:
        self.classifier, self.scene_classifier

    def extract(self, image: Image.Image) -> np.ndarray:
        return self.extract_many([image])[0]

    def extract_many(self, images: list[Image.Image]) -> list[np.ndarray]:
        probabilities = self.classifier.classify(images).probabilities
        by_name = np.zeros((len(images), len(self.object_names)), np.float32)
        np.add.at(by_name, (slice(None), self._name_of_class), probabilities)
        if self.scene_classifier is None:
            return list(np.sqrt(by_name))
        both = np.hstack([by_name, self.scene_classifier.classify(images)])
        return list(np.sqrt(both / 2))

    def tags(self, feature: np.ndarray) -> list[str]:
        """The confident tags of a stored or extracted feature, most probable first: objects, then scenes."""
        probabilities = feature**2 * (2 if self.scene_classifier else 1)
        objects = len(self.object_names)
        found = self._confident(probabilities[:objects], MAX_TAGS)
        found += [objects + i for i in self._confident(probabilities[objects:], MAX_SCENE_TAGS)]
        return list(dict.fromkeys(self.names[i] for i in found))

    def embed_text(self, text: str) -> np.ndarray:
        """The tags `text` names: one tag exactly (case aside), else every tag containing all its words."""
        wanted = text.strip().lower()
        names = [name.lower() for name in self.names]
        exact = [i for i, name in enumerate(names) if name == wanted]
        words = wanted.split()
        matching = exact or [i for i, name in enumerate(names) if all(w in name.split() for w in words)]
        if not words or not matching:
            scenes = " and the 365 Places scene names" if self.scene_classifier else ""
            raise InvalidRequest(f"no tag matches {text!r}; tags are the 1,000 ImageNet class names{scenes}")
        query = np.zeros(len(names), np.float32)
        query[matching] = 1.0
        return query

    def _model_name(self) -> str:
        scenes = self.options.scenes
        return f"{self.options.model}-imagenet" + (f"+{scenes}" if scenes != "off" else "")

    @staticmethod
    def _confident(probabilities: np.ndarray, most: int) -> list[int]:
        best = np.argsort(-probabilities)[:most]
        return [int(i) for i in best if probabilities[i] >= MIN_PROBABILITY]
