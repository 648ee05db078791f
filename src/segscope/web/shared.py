"""What the analyst page's routers share: the app's state (the label store, the queue mix, limits, the CSRF
secret) as a FastAPI dependency, the templates, the cookies, CSRF tokens and the response headers."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from segscope.labels import LabelStore
from segscope.labels.queue import QueueMix
from segscope.labels.store import SEGMENT_IDS

__all__ = ["TEMPLATES", "AppState", "State"]

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TOKEN_COOKIE = "segscope_token"
ANALYST_COOKIE = "segscope_analyst"
CSRF_COOKIE = "segscope_csrf"
#: Segment ids are int32 in scored records; anything outside is refused before it reaches the database.
SEGMENT = {"ge": SEGMENT_IDS[0], "le": SEGMENT_IDS[1]}


@dataclass(frozen=True)
class AppState:
    """What every route of one app works with (kept on ``app.state.segscope``)."""

    store: LabelStore
    mix: QueueMix
    max_labels: int
    secret: bytes  # per process: CSRF tokens of a previous run stop working on restart

    def csrf_for(self, cookie: str) -> str:
        return hmac.new(self.secret, cookie.encode(), hashlib.sha256).hexdigest()


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.segscope
    return state


#: A route's parameter of this type is the app's :class:`AppState` (injected: FastAPI's ``Depends``).
State = Annotated[AppState, Depends(app_state)]


def check_csrf(state: AppState, request: Request, given: str) -> Response | None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if cookie and given and hmac.compare_digest(state.csrf_for(cookie), given):
        return None
    return forbidden(request, "this form expired or was not sent by this page; reload the page and try again")


def analyst_of(request: Request, given: str | None) -> str:
    return (given or unquote(request.cookies.get(ANALYST_COOKIE) or "")).strip()


def from_this_site(request: Request) -> bool:
    """Whether a page request was sent by this site (its own form or link) or by the user (address bar,
    bookmark), not by a link or script on another site: ``Sec-Fetch-Site``, else the Referer (as for a
    state-changing request)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.lower() in ("same-origin", "none")
    return same_origin(request)


def same_origin(request: Request) -> bool:
    """A state-changing request is accepted from this site only: its Origin (else its Referer) must name the
    scheme and host it was sent to. Clients that send neither (curl, scripts) pass; forms also need the token."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == own
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == own
    return True


def secure(response: Response, nonce: str | None = None) -> Response:
    """Headers every response carries (see :mod:`segscope.web.app`)."""
    scripts = f"'nonce-{nonce}'" if nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src {scripts}; style-src {scripts}; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def forbidden(request: Request, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return secure(JSONResponse({"detail": message}, status_code=403))
    return secure(HTMLResponse(f"<!DOCTYPE html><title>refused</title><p>{_escape(message)}</p>", status_code=403))


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def local(path: str) -> str:
    """Only redirect within this app."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


def page_error(request: Request, message: str, status: int) -> Response:
    return TEMPLATES.TemplateResponse(request, "error.html", {"message": message}, status_code=status)
