"""The JSON API: the review queue and the labels, read and added (``application/json`` only: a cross-site form
cannot send it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from segscope.exceptions import DataError
from segscope.labels import LabelIn, LabelStore, UnknownRecordError
from segscope.web.shared import SEGMENT, State

__all__ = ["LabelBody", "router"]

router = APIRouter(prefix="/api")


class LabelBody(BaseModel):
    id: str = Field(min_length=1, max_length=255)
    label: str = Field(max_length=32)
    analyst: str = Field(min_length=1, max_length=255)
    category: str | None = Field(default=None, max_length=255)
    note: str | None = Field(default=None, max_length=10_000)


@router.get("/queue")
def api_queue(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    analyst: Annotated[str | None, Query(max_length=255)] = None,
    segment: Annotated[int | None, Query(**SEGMENT)] = None,
    min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
) -> list[dict[str, Any]]:
    items = state.store.queue(limit, state.mix, analyst=analyst, segment=segment, min_score=min_score)
    return [{k: v for k, v in item.items() if k != "vector"} for item in items]


@router.post("/labels", status_code=201)
async def api_add_label(request: Request, state: State) -> Response:
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
    if isinstance(raw, list) and len(raw) > state.max_labels:
        return JSONResponse(
            {"detail": f"{len(raw):,} labels in one request; send at most {state.max_labels:,} per request"},
            status_code=413,
        )
    try:
        items = [LabelBody.model_validate(b) for b in (raw if isinstance(raw, list) else [raw])]
    except ValueError as exc:
        return JSONResponse({"detail": " ".join(str(exc).split())[:500]}, status_code=422)
    return await run_in_threadpool(_add_labels, state.store, items)


def _add_labels(store: LabelStore, items: list[LabelBody]) -> Response:
    try:
        added = store.add_labels([LabelIn(b.id, b.label, b.analyst, b.category, b.note) for b in items], source="api")
    except UnknownRecordError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=404)
    except DataError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    status = 201 if added.added else 200  # 200: already so, nothing new stored (idempotent)
    return JSONResponse({"added": added.added, "unchanged": added.unchanged}, status_code=status)


@router.get("/labels")
def api_labels(
    state: State, history: bool = False, analyst: Annotated[str | None, Query(max_length=255)] = None
) -> list[dict[str, Any]]:
    frame = state.store.labels(history=history, analyst=analyst)
    return [{**row, "created_at": row["created_at"].isoformat()} for row in frame.to_dicts()]
