"""FastAPI app over a :class:`~segscope.store.LabelStore`: the review queue page, the labels page, and a JSON API.

Pages are server-rendered with Jinja2 (autoescaped: a value such as ``<script>`` shows as text) and work with plain
HTML forms; a small inline script adds keyboard shortcuts. When bound beyond loopback the app requires a token
(``Authorization: Bearer``, or ``?token=`` once, which sets a same-site cookie).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from segscope.exceptions import DataError
from segscope.queue import QueueMix
from segscope.store import LabelIn, LabelStore, UnknownRecordError

__all__ = ["create_app"]

_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
_TOKEN_COOKIE = "segscope_token"
_ANALYST_COOKIE = "segscope_analyst"


class LabelBody(BaseModel):
    id: str = Field(min_length=1)
    label: str
    analyst: str = Field(min_length=1)
    category: str | None = None
    note: str | None = None


def create_app(store: LabelStore, *, token: str | None = None, mix: QueueMix | None = None) -> FastAPI:
    """The app; ``token`` (when given) is required on every request."""
    mix = mix or QueueMix()
    app = FastAPI(title="segscope analyst", docs_url="/api/docs", openapi_url="/api/openapi.json")

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if token is None or request.url.path == "/healthz":
            return await call_next(request)  # type: ignore[no-any-return]
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or request.cookies.get(_TOKEN_COOKIE, "") or request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"detail": "a token is required: Authorization: Bearer <token>"}, status_code=401)
        response: Response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(_TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    def analyst_of(request: Request, given: str | None) -> str:
        return (given or request.cookies.get(_ANALYST_COOKIE) or "").strip()

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def queue_page(
        request: Request,
        analyst: str | None = None,
        segment: int | None = None,
        min_score: float | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 25,
        done: str | None = None,
    ) -> Response:
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
                "back": "/?" + urlencode(filters),
                "segments": sorted({i["segment"] for i in items if i["segment"] >= 0}),
            },
        )
        if analyst:
            response.set_cookie(_ANALYST_COOKIE, who, samesite="strict")
        return response

    @app.post("/label")
    def label_form(
        request: Request,
        id: Annotated[str, Form()],
        label: Annotated[str, Form()],
        analyst: Annotated[str, Form()] = "",
        category: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
        back: Annotated[str, Form()] = "/",
    ) -> Response:
        who = analyst_of(request, analyst)
        if not who:
            return _page_error(request, "say who you are first (the analyst field at the top)", 400)
        try:
            store.add_labels([LabelIn(id, label, who, category or None, note or None)], source="page")
        except UnknownRecordError as exc:
            return _page_error(request, str(exc), 404)
        except DataError as exc:
            return _page_error(request, str(exc), 422)
        return RedirectResponse(_local(back) + ("&" if "?" in back else "?") + urlencode({"done": id}), status_code=303)

    @app.post("/bulk")
    def bulk_form(
        request: Request,
        segment: Annotated[int, Form()],
        label: Annotated[str, Form()],
        analyst: Annotated[str, Form()] = "",
        category: Annotated[str, Form()] = "",
        back: Annotated[str, Form()] = "/",
    ) -> Response:
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
    def labels_page(request: Request, analyst: str | None = None, history: bool = True) -> Response:
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
        analyst: str | None = None,
        segment: int | None = None,
        min_score: float | None = None,
    ) -> list[dict[str, Any]]:
        items = store.queue(limit, mix, analyst=analyst, segment=segment, min_score=min_score)
        return [{k: v for k, v in item.items() if k != "vector"} for item in items]

    @app.post("/api/labels", status_code=201)
    def api_add_label(body: LabelBody | list[LabelBody]) -> Response:
        items = body if isinstance(body, list) else [body]
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
    def api_labels(history: bool = False, analyst: str | None = None) -> list[dict[str, Any]]:
        frame = store.labels(history=history, analyst=analyst)
        return [{**row, "created_at": row["created_at"].isoformat()} for row in frame.to_dicts()]

    return app


def _local(path: str) -> str:
    """Only redirect within this app."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


def _page_error(request: Request, message: str, status: int) -> Response:
    return _TEMPLATES.TemplateResponse(request, "error.html", {"message": message}, status_code=status)
