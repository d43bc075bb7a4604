"""Named models: where their weights come from, how they are turned into ONNX once, and how they run."""

from .download import RemoteWeights, fetch_weights

__all__ = ["RemoteWeights", "fetch_weights"]
