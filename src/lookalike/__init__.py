"""lookalike: image retrieval for self-hosted photo galleries."""

__version__ = "0.1.0"
