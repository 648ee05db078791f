"""FastAPI app over a :class:`~segscope.store.LabelStore`: the review queue page, the labels page, and a JSON API.

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

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from segscope.exceptions import ConfigError, DataError
from segscope.labels import LabelIn, LabelStore, UnknownRecordError
from segscope.labels.queue import QueueMix
from segscope.labels.store import SEGMENT_IDS

__all__ = ["LOOPBACK_HOSTS", "check_token", "create_app"]

_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
_TOKEN_COOKIE = "segscope_token"
_ANALYST_COOKIE = "segscope_analyst"
_CSRF_COOKIE = "segscope_csrf"
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
#: The pages a link may carry ``?token=`` to (a browser cannot add a header to a link).
_TOKEN_LINK_PAGES = ("/", "/labels")
#: Host names always served: the loopback interface.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Segment ids are int32 in scored records; anything outside is refused before it reaches the database.
_SEGMENT = {"ge": SEGMENT_IDS[0], "le": SEGMENT_IDS[1]}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class LabelBody(BaseModel):
    id: str = Field(min_length=1, max_length=255)
    label: str = Field(max_length=32)
    analyst: str = Field(min_length=1, max_length=255)
    category: str | None = Field(default=None, max_length=255)
    note: str | None = Field(default=None, max_length=10_000)


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
    secret = secrets.token_bytes(32)  # per process: CSRF tokens of a previous run stop working on restart
    app = FastAPI(title="segscope analyst", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.add_middleware(_BodyLimit, limit=max_body_bytes)

    def csrf_for(cookie: str) -> str:
        return hmac.new(secret, cookie.encode(), hashlib.sha256).hexdigest()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = _host_name(request.headers.get("host", ""))
        if host not in hosts:
            return _secure(
                JSONResponse(
                    {"detail": f"host {host!r} is not served here; start segscope serve with --allowed-host {host}"},
                    status_code=400,
                )
            )
        if request.method in _UNSAFE and not _same_origin(request):
            return _forbidden(request, "a request from another site was refused (cross-site request forgery)")
        link = request.method == "GET" and request.url.path in _TOKEN_LINK_PAGES
        if token is not None and request.url.path != "/healthz":
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.cookies.get(_TOKEN_COOKIE, "")
            given = given or (request.query_params.get("token", "") if link else "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                where = (
                    "; the token is not read from the URL here, send it as a header"
                    if "token" in request.query_params and not link
                    else ""
                )
                return _secure(
                    JSONResponse(
                        {"detail": f"a token is required: Authorization: Bearer <token>{where}"}, status_code=401
                    )
                )
        request.state.csp_nonce = secrets.token_urlsafe(16)
        cookie = request.cookies.get(_CSRF_COOKIE, "")
        fresh = len(cookie) < 32
        if fresh:
            cookie = secrets.token_urlsafe(32)
        request.state.csrf = csrf_for(cookie)
        request.state.csrf_cookie = cookie
        response: Response = await call_next(request)
        if token is not None and link and request.query_params.get("token"):
            response.set_cookie(_TOKEN_COOKIE, token, httponly=True, samesite="strict")
        if fresh and response.headers.get("content-type", "").startswith("text/html"):
            response.set_cookie(_CSRF_COOKIE, cookie, httponly=True, samesite="strict")
        return _secure(response, request.state.csp_nonce)

    def check_csrf(request: Request, given: str) -> Response | None:
        cookie = request.cookies.get(_CSRF_COOKIE, "")
        if cookie and given and hmac.compare_digest(csrf_for(cookie), given):
            return None
        return _forbidden(request, "this form expired or was not sent by this page; reload the page and try again")

    def analyst_of(request: Request, given: str | None) -> str:
        return (given or unquote(request.cookies.get(_ANALYST_COOKIE) or "")).strip()

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def queue_page(
        request: Request,
        analyst: Annotated[str | None, Query(max_length=255)] = None,
        segment: Annotated[int | None, Query(**_SEGMENT)] = None,
        min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 25,
        done: Annotated[str | None, Query(max_length=255)] = None,
    ) -> Response:
        ignored = analyst if analyst and not _from_this_site(request) else None
        if ignored is not None:  # a link or script on another site may not say who labels
            analyst = None
        who = analyst_of(request, analyst)
        items = store.queue(limit, mix, analyst=who or None, segment=segment, min_score=min_score)
        left = mix.daily_budget - store.labelled_today(who) if who else None
        filters = {k: v for k, v in {"segment": segment, "min_score": min_score, "limit": limit}.items() if v}
        response = _TEMPLATES.TemplateResponse(
            request,
            "queue.html",
            {
                "items": items,
                "analyst": who,
                "segment": segment,
                "min_score": min_score,
                "limit": limit,
                "left": left,
                "budget": mix.daily_budget,
                "done": done,
                "ignored": ignored,
                "back": "/?" + urlencode(filters),
                "segments": sorted({i["segment"] for i in items if i["segment"] >= 0}),
            },
        )
        if analyst and who:  # percent-encoded: a header holds Latin-1 only, names are in any script
            response.set_cookie(_ANALYST_COOKIE, quote(who, safe=""), samesite="strict", httponly=True)
        return response

    @app.post("/label")
    def label_form(
        request: Request,
        label: Annotated[str, Form(max_length=32)],
        id: Annotated[str, Form(max_length=255)] = "",
        analyst: Annotated[str, Form(max_length=255)] = "",
        category: Annotated[str, Form(max_length=255)] = "",
        note: Annotated[str, Form(max_length=10_000)] = "",
        back: Annotated[str, Form(max_length=2000)] = "/",
        csrf_token: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        refused = check_csrf(request, csrf_token)
        if refused is not None:
            return refused
        who = analyst_of(request, analyst)
        if not who:
            return _page_error(request, "say who you are first (the analyst field at the top)", 400)
        if not id.strip():
            return _page_error(request, "the form sent no record id; reload the page and label the record again", 422)
        try:
            store.add_labels([LabelIn(id, label, who, category or None, note or None)], source="page")
        except UnknownRecordError as exc:
            return _page_error(request, str(exc), 404)
        except DataError as exc:
            return _page_error(request, str(exc), 422)
        back = _local(back)
        return RedirectResponse(back + ("&" if "?" in back else "?") + urlencode({"done": id}), status_code=303)

    @app.post("/bulk")
    def bulk_form(
        request: Request,
        segment: Annotated[int, Form(**_SEGMENT)],
        label: Annotated[str, Form(max_length=32)],
        analyst: Annotated[str, Form(max_length=255)] = "",
        category: Annotated[str, Form(max_length=255)] = "",
        back: Annotated[str, Form(max_length=2000)] = "/",
        csrf_token: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        refused = check_csrf(request, csrf_token)
        if refused is not None:
            return refused
        who = analyst_of(request, analyst)
        if not who:
            return _page_error(request, "say who you are first (the analyst field at the top)", 400)
        ids = [item["id"] for item in store.queue(500, QueueMix(top=1, uncertain=0, coverage=0), segment=segment)]
        try:
            store.add_labels([LabelIn(i, label, who, category or None) for i in ids], source="page")
        except DataError as exc:
            return _page_error(request, str(exc), 422)
        return RedirectResponse(_local(back), status_code=303)

    @app.get("/labels", response_class=HTMLResponse)
    def labels_page(
        request: Request, analyst: Annotated[str | None, Query(max_length=255)] = None, history: bool = True
    ) -> Response:
        rows = store.labels(history=history, analyst=analyst or None).head(1000).to_dicts()
        return _TEMPLATES.TemplateResponse(
            request, "labels.html", {"rows": rows, "analyst": analyst or "", "history": history}
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # ------------------------------------------------------------------ JSON API
    @app.get("/api/queue")
    def api_queue(
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        analyst: Annotated[str | None, Query(max_length=255)] = None,
        segment: Annotated[int | None, Query(**_SEGMENT)] = None,
        min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    ) -> list[dict[str, Any]]:
        items = store.queue(limit, mix, analyst=analyst, segment=segment, min_score=min_score)
        return [{k: v for k, v in item.items() if k != "vector"} for item in items]

    @app.post("/api/labels", status_code=201)
    async def api_add_label(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return JSONResponse(
                {"detail": f"send labels as application/json, not {kind or 'a body without a content type'}"},
                status_code=415,
            )
        try:
            raw = await request.json()
        except RecursionError:
            return JSONResponse(
                {"detail": "the JSON body is nested too deeply to read; send a label object or a list of them"},
                status_code=400,
            )
        except ValueError:
            return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
        if isinstance(raw, list) and len(raw) > max_labels:
            return JSONResponse(
                {"detail": f"{len(raw):,} labels in one request; send at most {max_labels:,} per request"},
                status_code=413,
            )
        try:
            items = [LabelBody.model_validate(b) for b in (raw if isinstance(raw, list) else [raw])]
        except ValueError as exc:
            return JSONResponse({"detail": " ".join(str(exc).split())[:500]}, status_code=422)
        return await run_in_threadpool(add_api_labels, items)

    def add_api_labels(items: list[LabelBody]) -> Response:
        try:
            added = store.add_labels(
                [LabelIn(b.id, b.label, b.analyst, b.category, b.note) for b in items], source="api"
            )
        except UnknownRecordError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=404)
        except DataError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        status = 201 if added.added else 200  # 200: already so, nothing new stored (idempotent)
        return JSONResponse({"added": added.added, "unchanged": added.unchanged}, status_code=status)

    @app.get("/api/labels")
    def api_labels(
        history: bool = False, analyst: Annotated[str | None, Query(max_length=255)] = None
    ) -> list[dict[str, Any]]:
        frame = store.labels(history=history, analyst=analyst)
        return [{**row, "created_at": row["created_at"].isoformat()} for row in frame.to_dicts()]

    return app


def check_token(token: str | None) -> None:
    """A token travels in a header and a cookie: visible ASCII only (anything else cannot be sent or set)."""
    if token is not None and not all("!" <= c <= "~" for c in token):
        raise ConfigError("--token: use ASCII letters, digits and punctuation only (no spaces or other characters)")


def _from_this_site(request: Request) -> bool:
    """Whether a page request was sent by this site (its own form or link) or by the user (address bar,
    bookmark), not by a link or script on another site: ``Sec-Fetch-Site``, else the Referer (as for a
    state-changing request)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.lower() in ("same-origin", "none")
    return _same_origin(request)


def _same_origin(request: Request) -> bool:
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


def _secure(response: Response, nonce: str | None = None) -> Response:
    """Headers every response carries (see the module docstring)."""
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


def _forbidden(request: Request, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return _secure(JSONResponse({"detail": message}, status_code=403))
    return _secure(HTMLResponse(f"<!DOCTYPE html><title>refused</title><p>{_escape(message)}</p>", status_code=403))


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def _local(path: str) -> str:
    """Only redirect within this app."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


def _page_error(request: Request, message: str, status: int) -> Response:
    return _TEMPLATES.TemplateResponse(request, "error.html", {"message": message}, status_code=status)
