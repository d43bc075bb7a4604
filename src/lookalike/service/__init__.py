"""The HTTP service: `app` builds it, `routes` and `legacy` declare its endpoints, `params` what they take."""

from .app import create_app

__all__ = ["create_app"]
