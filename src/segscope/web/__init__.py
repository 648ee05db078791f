"""The analyst page and its JSON API (FastAPI, server-rendered: no JavaScript build step)."""

from segscope.web.app import LOOPBACK_HOSTS, check_token, create_app

__all__ = ["LOOPBACK_HOSTS", "check_token", "create_app"]
