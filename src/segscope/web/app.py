"""FastAPI app over a :class:`~segscope.store.LabelStore`: the review queue page, the labels page, and a JSON API
(the routers of :mod:`segscope.web.pages` and :mod:`segscope.web.api`, the store injected through
:mod:`segscope.web.shared`); this module wires them and guards every request.

Pages are server-rendered with Jinja2 (autoescaped: a value such as ``<script>`` shows as text) and work with plain
HTML forms; a small inline script (allowed by a per-response CSP nonce) adds keyboard shortcuts.

What protects the labels, which feed fine-tuning:

* **host names**: only the names the server was bound to (loopback by default, plus ``allowed_hosts``) are
  answered, so a page on another site cannot read the queue by DNS rebinding;
* **CSRF**: every form carries a token bound to a cookie (HMAC with a per-process secret), and every
  state-changing request whose ``Origin`` (or ``Referer``) is another site is refused; the JSON API takes only
  ``application/json``, which a cross-site form or a "simple" cross-site request cannot send;
* **headers**: a strict Content-Security-Policy (no framing, scripts and styles only with the nonce), ``nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: same-origin``, ``Cache-Control: no-store``;
* **size**: request bodies above ``max_body_bytes`` and JSON posts of more than ``max_labels`` labels get 413;
  JSON nested too deeply to parse gets 400;
* **token**: when given (required off loopback), every request needs it: ``Authorization: Bearer`` (scripts) or
  the same-site cookie a browser gets from a link to a page with ``?token=`` (``GET /`` or ``GET /labels`` only,
  the one place a browser cannot send a header; the page then takes the token out of its address bar). The API
  never takes it from the URL, so it stays out of access logs;
* **who labels**: the analyst name is kept in a cookie (percent-encoded: any script), set or changed by
  ``?analyst=`` only when the request comes from this site or from the user (``Sec-Fetch-Site: same-origin`` or
  ``none``; without that header, a Referer of this origin or none). A link or script on another site that names
  an analyst is ignored (the page says so), so it cannot change whom labels are attributed to.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from segscope.exceptions import ConfigError, DataError
from segscope.labels import LabelStore
from segscope.labels.queue import QueueMix
from segscope.web import api, pages
from segscope.web.shared import CSRF_COOKIE, TOKEN_COOKIE, AppState, forbidden, same_origin, secure

__all__ = ["LOOPBACK_HOSTS", "check_token", "create_app"]

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
#: The pages a link may carry ``?token=`` to (a browser cannot add a header to a link).
_TOKEN_LINK_PAGES = ("/", "/labels")
#: Host names always served: the loopback interface.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:8000`` -> ``::1``, ``Example.org:80`` -> ``example.org``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or as the bytes arrive."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = JSONResponse({"detail": self._message()}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body larger than {self.limit:,} bytes; send fewer labels per request"


def create_app(
    store: LabelStore,
    *,
    token: str | None = None,
    mix: QueueMix | None = None,
    allowed_hosts: Iterable[str] = (),
    max_body_bytes: int = 2 * 2**20,
    max_labels: int = 5000,
) -> FastAPI:
    """The app; ``token`` (when given) is required on every request. ``allowed_hosts``: host names besides the
    loopback ones that requests may be addressed to (the names the server is reached by)."""
    check_token(token)
    mix = mix or QueueMix()
    hosts = {h.strip().lower().strip("[]") for h in allowed_hosts} | set(LOOPBACK_HOSTS)
    state = AppState(store, mix, max_labels, secrets.token_bytes(32))
    app = FastAPI(title="segscope analyst", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.segscope = state
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.include_router(pages.router)
    app.include_router(api.router)

    @app.exception_handler(DataError)
    async def unreadable(request: Request, exc: DataError) -> Response:  # a damaged store: say so, no traceback
        return secure(JSONResponse({"detail": str(exc)}, status_code=503))

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = _host_name(request.headers.get("host", ""))
        if host not in hosts:
            return secure(
                JSONResponse(
                    {"detail": f"host {host!r} is not served here; start segscope serve with --allowed-host {host}"},
                    status_code=400,
                )
            )
        if request.method in _UNSAFE and not same_origin(request):
            return forbidden(request, "a request from another site was refused (cross-site request forgery)")
        link = request.method == "GET" and request.url.path in _TOKEN_LINK_PAGES
        if token is not None and request.url.path != "/healthz":
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.cookies.get(TOKEN_COOKIE, "")
            given = given or (request.query_params.get("token", "") if link else "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                where = (
                    "; the token is not read from the URL here, send it as a header"
                    if "token" in request.query_params and not link
                    else ""
                )
                return secure(
                    JSONResponse(
                        {"detail": f"a token is required: Authorization: Bearer <token>{where}"}, status_code=401
                    )
                )
        request.state.csp_nonce = secrets.token_urlsafe(16)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        fresh = len(cookie) < 32
        if fresh:
            cookie = secrets.token_urlsafe(32)
        request.state.csrf = state.csrf_for(cookie)
        request.state.csrf_cookie = cookie
        response: Response = await call_next(request)
        if token is not None and link and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        if fresh and response.headers.get("content-type", "").startswith("text/html"):
            response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict")
        return secure(response, request.state.csp_nonce)

    return app


def check_token(token: str | None) -> None:
    """A token travels in a header and a cookie: visible ASCII only (anything else cannot be sent or set)."""
    if token is not None and not all("!" <= c <= "~" for c in token):
        raise ConfigError("--token: use ASCII letters, digits and punctuation only (no spaces or other characters)")
