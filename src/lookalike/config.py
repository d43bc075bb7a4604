"""Settings, validated once at start-up; every field can be set as LOOKALIKE_<NAME>."""

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "lookalike"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the store and indexes live.")
    engines: list[str] = Field(default=["phash", "color"], description="Engines to serve, by registered name.")
    host: str = Field(default="127.0.0.1", description="Address the service binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the service listens on.")
    max_upload_bytes: int = Field(default=100 * 2**20, gt=0, description="Largest accepted upload.")
    max_pixels: int = Field(default=200_000_000, gt=0, description="Largest accepted image, in pixels.")
    checkpoint_seconds: float = Field(
        default=60.0, gt=0, description="How often changed indexes are saved; the journal covers the gap."
    )
