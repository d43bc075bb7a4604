"""Named models: where their weights come from, how they are turned into ONNX once, and how they run."""

from pathlib import Path

from .download import RemoteWeights, fetch_weights

# Where engines made outside a library keep their models; a library keeps them in DATA_DIR/models.
DEFAULT_MODELS_DIR = Path.home() / ".cache" / "lookalike" / "models"

__all__ = ["DEFAULT_MODELS_DIR", "RemoteWeights", "fetch_weights"]
