"""Settings, validated once at start-up; every field can be set as LOOKALIKE_<NAME>."""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .engines import ENGINES


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "lookalike"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the store and indexes live.")
    engines: list[str] = Field(
        default=["phash", "color", "local"], min_length=1, description="Engines to serve, by registered name."
    )
    host: str = Field(default="127.0.0.1", description="Address the service binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the service listens on.")
    max_upload_bytes: int = Field(default=100 * 2**20, gt=0, description="Largest accepted upload.")
    max_pixels: int = Field(default=200_000_000, gt=0, description="Largest accepted image, in pixels.")
    checkpoint_seconds: float = Field(
        default=60.0, gt=0, description="How often changed indexes are saved; the journal covers the gap."
    )
    local_descriptor: Literal["rootsift", "sift", "xfeat", "hardnet8"] = Field(
        default="rootsift",
        description="Local features' descriptor; xfeat and hardnet8 need the `neural` extra, hardnet8 downloads "
        "its weights on first use. Fixed per data directory.",
    )
    nprobe: int = Field(
        default=16, ge=1, le=4096, description="Inverted lists the trained local features index scans per query."
    )

    @field_validator("engines")
    @classmethod
    def registered(cls, engines: list[str]) -> list[str]:
        unknown = [name for name in engines if name not in ENGINES]
        if unknown:
            raise ValueError(f"unknown engine {unknown[0]!r}; registered engines: {', '.join(ENGINES)}")
        return engines

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def engine_options(self) -> dict[str, dict]:
        """Each engine's constructor options, from these settings."""
        return {"local": {"descriptor": self.local_descriptor, "models_dir": self.models_dir}}
