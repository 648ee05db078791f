"""The analyst page and its JSON API (FastAPI, server-rendered: no JavaScript build step)."""

from segscope.web.app import create_app

__all__ = ["create_app"]
