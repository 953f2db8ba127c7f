"""The HTTP service over the published tables and the champion models (``churnseg api``)."""

from churnseg.pipelines.api.app import create_app

__all__ = ["create_app"]
