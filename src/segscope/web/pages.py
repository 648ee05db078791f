"""The analyst's pages: the review queue (label one record, or a segment at once), the labels, and the health
check. Plain HTML forms, each carrying a CSRF token (:func:`segscope.web.shared.check_csrf`)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from segscope.exceptions import DataError
from segscope.labels import LabelIn, UnknownRecordError
from segscope.labels.queue import QueueMix
from segscope.web.shared import (
    ANALYST_COOKIE,
    SEGMENT,
    TEMPLATES,
    AppState,
    State,
    analyst_of,
    check_csrf,
    from_this_site,
    local,
    page_error,
)

__all__ = ["router"]

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def queue_page(
    request: Request,
    state: State,
    analyst: Annotated[str | None, Query(max_length=255)] = None,
    segment: Annotated[int | None, Query(**SEGMENT)] = None,
    min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 25,
    done: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    ignored = analyst if analyst and not from_this_site(request) else None
    if ignored is not None:  # a link or script on another site may not say who labels
        analyst = None
    who = analyst_of(request, analyst)
    mix = state.mix
    items = state.store.queue(limit, mix, analyst=who or None, segment=segment, min_score=min_score)
    left = mix.daily_budget - state.store.labelled_today(who) if who else None
    filters = {k: v for k, v in {"segment": segment, "min_score": min_score, "limit": limit}.items() if v}
    response = TEMPLATES.TemplateResponse(
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
        response.set_cookie(ANALYST_COOKIE, quote(who, safe=""), samesite="strict", httponly=True)
    return response


@router.post("/label")
def label_form(
    request: Request,
    state: State,
    label: Annotated[str, Form(max_length=32)],
    id: Annotated[str, Form(max_length=255)] = "",
    analyst: Annotated[str, Form(max_length=255)] = "",
    category: Annotated[str, Form(max_length=255)] = "",
    note: Annotated[str, Form(max_length=10_000)] = "",
    back: Annotated[str, Form(max_length=2000)] = "/",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    who = _form_sender(state, request, csrf_token, analyst)
    if isinstance(who, Response):
        return who
    if not id.strip():
        return page_error(request, "the form sent no record id; reload the page and label the record again", 422)
    try:
        state.store.add_labels([LabelIn(id, label, who, category or None, note or None)], source="page")
    except UnknownRecordError as exc:
        return page_error(request, str(exc), 404)
    except DataError as exc:
        return page_error(request, str(exc), 422)
    back = local(back)
    return RedirectResponse(back + ("&" if "?" in back else "?") + urlencode({"done": id}), status_code=303)


@router.post("/bulk")
def bulk_form(
    request: Request,
    state: State,
    segment: Annotated[int, Form(**SEGMENT)],
    label: Annotated[str, Form(max_length=32)],
    analyst: Annotated[str, Form(max_length=255)] = "",
    category: Annotated[str, Form(max_length=255)] = "",
    back: Annotated[str, Form(max_length=2000)] = "/",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    who = _form_sender(state, request, csrf_token, analyst)
    if isinstance(who, Response):
        return who
    ids = [item["id"] for item in state.store.queue(500, QueueMix(top=1, uncertain=0, coverage=0), segment=segment)]
    try:
        state.store.add_labels([LabelIn(i, label, who, category or None) for i in ids], source="page")
    except DataError as exc:
        return page_error(request, str(exc), 422)
    return RedirectResponse(local(back), status_code=303)


def _form_sender(state: AppState, request: Request, csrf_token: str, analyst: str) -> str | Response:
    """Who sent a form (the analyst), or the page that refuses it: a form of another page or run, or no analyst."""
    refused = check_csrf(state, request, csrf_token)
    if refused is not None:
        return refused
    who = analyst_of(request, analyst)
    return who or page_error(request, "say who you are first (the analyst field at the top)", 400)


@router.get("/labels", response_class=HTMLResponse)
def labels_page(
    request: Request,
    state: State,
    analyst: Annotated[str | None, Query(max_length=255)] = None,
    history: bool = True,
) -> Response:
    rows = state.store.labels(history=history, analyst=analyst or None).head(1000).to_dicts()
    return TEMPLATES.TemplateResponse(
        request, "labels.html", {"rows": rows, "analyst": analyst or "", "history": history}
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
