"""The small interface every engine implements: declare a feature, extract it, maybe add query variants."""

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Self

from PIL import Image
from pydantic import BaseModel, ConfigDict

from ..features import FeatureSpec, Matches
from ..models import DEFAULT_MODELS_DIR


class EngineOptions(BaseModel):
    """An engine's options. A field's alias, where it has one, names the setting that sets it
    (`descriptor` <- `local_descriptor`, i.e. LOOKALIKE_LOCAL_DESCRIPTOR), so the settings feed every
    engine without naming one."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    models_dir: Path = DEFAULT_MODELS_DIR

    @classmethod
    def from_settings(cls, settings: dict) -> Self:
        """The options that `settings` (a dict of the settings given) set; the rest keep their defaults."""
        names = [field.validation_alias or name for name, field in cls.model_fields.items()]
        return cls.model_validate({name: settings[name] for name in names if name in settings})


def known_name(name: str, names: Iterable[str], what: str) -> str:
    """`name`, if it is one of `names`: an options validator's check of a model's name, naming the choices."""
    names = list(names)
    if name not in names:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(names)}")
    return name


class Engine(ABC):
    name: ClassVar[str]
    spec: FeatureSpec
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    # Smallest side of the decoded image this engine needs; None means full resolution.
    decode_side: int | None = None
    # Distance at or under which two images count as the same (used by `dupes` and the gateway).
    duplicate_threshold: float
    # Served unless the settings name the engines to serve.
    enabled_by_default: ClassVar[bool] = True
    # A few photos a second on a core or fewer, where the others make tens (bench/background_pass.py):
    # where a library is built in two passes (`lookalike index`, an add with defer_slow), its features
    # are made in the second, the background pass.
    slow: ClassVar[bool] = False

    def __init__(self, options: EngineOptions | None = None):
        self.options = options or self.Options()

    @property
    def model(self) -> str | None:
        """The model it runs (its descriptor, for local features), as the library page shows it."""
        return getattr(self.options, "model", None) or getattr(self.options, "descriptor", None)

    def prepare(self) -> None:
        """Fetch or load what extraction needs (a model), so that it happens once and up front."""

    @abstractmethod
    def extract(self, image: Image.Image):
        """One RGB image to one feature, as `spec` describes it: a 1-D array of `spec.width` elements
        of `spec.dtype`, a `Keypoints` (points) or a `TextLines` (text)."""

    def extract_many(self, images: list[Image.Image]) -> list:
        """Features of several images; neural engines run them through their model as one batch."""
        return [self.extract(image) for image in images]

    def query_variants(self, image: Image.Image, mirrored: bool = False) -> list:
        """Features to search with; an image's score is its best over all variants.

        `mirrored` asks for the mirror image too, where an engine does not search with it anyway.
        """
        return [self.extract(image)]

    def verify(self, query, stored) -> Matches:
        """Points engines: the matches between two features one geometry explains (0: none)."""
        raise NotImplementedError(f"the {self.name} engine does not verify matches")

    def verify_all(self, query, candidates: list) -> list[Matches]:
        """Points engines: `verify` of the query against each candidate its index's votes found, judged
        together (a match many candidates share may count for none of them)."""
        return [self.verify(query, stored) for stored in candidates]

    def verify_variants(self, variants: list, candidates: list) -> list[Matches]:
        """Points engines: each candidate's best `verify_all` over the query's variants."""
        best = [Matches(0, 0)] * len(candidates)
        for variant in variants:
            best = [max(old, new) for old, new in zip(best, self.verify_all(variant, candidates))]
        return best


class TextSearchable(ABC):
    """An engine that also answers a text query, with a feature in the same space as its images'."""

    @abstractmethod
    def embed_text(self, text: str):
        """The text's query feature; raises InvalidRequest when the engine cannot read this text."""
