"""Scored records as JSON: the input message's own bytes with the scored fields appended.

A record that came from Kafka is never re-encoded: its JSON object's bytes are kept as they came (numbers keep
their spelling, a 30-digit integer or ``1e400`` included; strings keep their escapes; whitespace and key order
stay), the closing brace is taken off, and ``,"id":...,"score":...}`` is appended. A field of the input with the
name of one segscope appends (``score``, ``segment``, ...) is taken out of the bytes, member by member, and
segscope's value is appended in its place; every other member keeps its bytes. The id field itself (a
record whose id column is ``id``) is kept as it came and not appended again.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection
from typing import Any

import orjson
import polars as pl

from segscope.schema import SCORED_COLUMNS
from segscope.sources.base import Batch

__all__ = ["appended_at_once", "appended_one_by_one", "encode", "members", "splice"]

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\],]', re.DOTALL)  # strings, and what nests or separates
_SCALAR = re.compile(rb"[^,}\]\s]*")


def members(body: bytes) -> list[tuple[str, int, int]]:
    """The top-level members of a JSON object's bytes (valid JSON, as a decoder accepted it): each as its key
    (decoded: ``"\\u0069d"`` is ``id``) and the span ``body[start:end]`` of ``"key": value``, up to the ``,`` or
    ``}`` that ends it."""
    found: list[tuple[str, int, int]] = []
    depth, start, key = 0, -1, None
    for token in _TOKEN.finditer(body):
        c = body[token.start()]
        if c == 0x22:  # a string: a key when it opens a member of the top level
            if depth == 1 and key is None:
                text = token.group()
                key, start = (text[1:-1].decode() if b"\\" not in text else orjson.loads(text)), token.start()
        elif c == 0x2C:  # ,
            if depth == 1:
                found.append((key, start, token.start()))  # type: ignore[arg-type]
                key = None
        elif c in (0x7B, 0x5B):  # { [
            depth += 1
        else:  # } ]
            depth -= 1
            if depth == 0:
                if key is not None:
                    found.append((key, start, token.start()))
                return found
    raise ValueError("not a JSON object")


def _found_plainly(body: bytes, names: Collection[str]) -> list[tuple[int, int]] | None:
    """The spans of the members ``names`` where a plain search finds each once (``"name":``, not after a
    backslash) with a string or scalar value: the usual case, without reading the message member by member (when
    the message has a backslash, the caller checks that the cut took them off the top level). None when the
    search cannot tell."""
    spans = []
    for name in names:
        quoted = b'"' + name.encode() + b'"'
        if body.count(quoted) != 1:
            return None
        start = body.find(quoted)
        at = start + len(quoted)
        if body[at] != 0x3A:  # ':' after spaces
            at = _WS.match(body, at).end()  # type: ignore[union-attr]
            if body[at] != 0x3A:
                return None
        if body[start - 1] == 0x5C:  # an escaped quote: inside a name or a string
            return None
        at += 1
        if body[at] in b" \t\n\r":
            at = _WS.match(body, at).end()  # type: ignore[union-attr]
        first = body[at]
        if first == 0x22:
            end = _STRING.match(body, at).end()  # type: ignore[union-attr]
        elif first in (0x7B, 0x5B):
            return None
        else:  # a number or a literal: up to the ',' or '}' after it
            comma, brace = body.find(b",", at), body.find(b"}", at)
            end = brace if comma < 0 else min(comma, brace)
        if body[end] not in (0x2C, 0x7D):
            end = _WS.match(body, end).end()  # type: ignore[union-attr]
            if body[end] not in (0x2C, 0x7D):
                return None
        spans.append((start, end))
    return spans


def _cut(body: bytes, spans: list[tuple[int, int]]) -> bytes:
    """``body`` without the members at ``spans`` (each up to its ``,`` or ``}``), and the commas between."""
    for start, end in sorted(spans, reverse=True):
        if body[end] == 0x2C:  # a member with one after it: it goes with its comma
            body = body[:start] + body[end + 1 :]
        else:  # the last member: it goes with the comma before it
            head = body[:start].rstrip()
            body = (head[:-1] if head.endswith(b",") else head) + body[end:]
    return body


def _took_off(body: bytes, names: Collection[str], members_left: int) -> bool:
    """Whether ``body`` is a JSON object of ``members_left`` members, none named in ``names``."""
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError:  # a cut that broke it, or a number orjson cannot read (1e400): no telling
        return False
    return type(record) is dict and len(record) == members_left and not any(name in record for name in names)


def splice(body: bytes, tail: bytes, drop: Collection[str] = (), members_in: int = -1) -> bytes:
    """``body`` (a JSON object's bytes, with ``members_in`` distinct top-level names) with the members of
    ``tail`` (a JSON object's bytes) appended, after the top-level members of ``body`` named in ``drop`` are
    taken out."""
    body = body.rstrip()
    if drop:
        spans = _found_plainly(body, drop)
        cut = _cut(body, spans) if spans is not None else b""
        # without a backslash no name is spelled with escapes and no string holds a quote: the search is sure
        if spans is None or (b"\\" in body and not _took_off(cut, drop, members_in - len(drop))):
            cut = _cut(body, [(s, e) for key, s, e in members(body) if key in drop])
        body = cut
    head = body[:-1]
    if len(tail) <= 2 or head.rstrip().endswith(b"{"):  # nothing to append, or an empty object
        return head + tail[1:]
    return head + b"," + tail[1:]


def encode(scored: pl.DataFrame, batch: Batch | None) -> list[bytes]:
    """One output value per scored row: the input message with ``id``, the columns the model derived (per-entity
    features) and the scored columns appended (see the module docstring)."""
    if batch is None or batch.raw is None or batch.records is None:  # not from Kafka: the whole scored rows
        return scored.write_ndjson().encode().splitlines()
    given = set(batch.frame.columns)
    derived = [c for c in scored.columns if c not in given and c not in SCORED_COLUMNS]
    tail = scored.select(*derived, *SCORED_COLUMNS)
    appended = {*derived, *SCORED_COLUMNS}
    if batch.ids is not None and batch.id_field != "id":  # an id field that is the id stays as it came
        tail = tail.select(pl.Series("id", batch.ids, dtype=pl.String), *tail.columns)
        appended.add("id")
    if all(batch.records) and appended.isdisjoint(set().union(*batch.records)):  # the usual poll
        at_once = appended_at_once(tail, batch.raw)
        if at_once is not None:
            return at_once
    return appended_one_by_one(tail, batch.raw, batch.records, appended)


def appended_at_once(tail: pl.DataFrame, raw: list[bytes | None]) -> list[bytes] | None:
    """Each message's bytes with its row of ``tail`` appended, by Polars for the whole batch (one JSON writer,
    the lock released); None when a message has no bytes or bytes that are not UTF-8 text. For messages that
    hold none of the names appended and are no empty object: the caller checks."""
    body = pl.Series("body", raw, dtype=pl.Binary)
    if body.null_count():
        return None
    try:
        body = body.cast(pl.String)
    except pl.exceptions.ComputeError:  # invalid UTF-8
        return None
    rows = tail.select(pl.struct(pl.all()).struct.json_encode().alias("tail")).with_columns(body)
    spliced = pl.concat_str(  # valid JSON (a decoder read it) ends with '}' and JSON's own white space
        pl.col("body").str.strip_chars_end(" \t\n\r").str.head(-1), pl.lit(","), pl.col("tail").str.tail(-1)
    )
    return rows.select(spliced.cast(pl.Binary)).to_series().to_list()


def appended_one_by_one(
    tail: pl.DataFrame, raw: list[bytes | None], records: list[dict[str, Any]], appended: Collection[str]
) -> list[bytes]:
    """Each message with its row of ``tail`` appended, one at a time: a message decoded from Avro or Protobuf
    (no JSON bytes) is encoded whole, one that holds a name appended has that member cut out first."""
    written = io.BytesIO()  # bytes as polars writes them (no str to encode again)
    tail.write_ndjson(written)
    lines = written.getvalue().splitlines()
    out = []
    names = set(appended)
    disjoint, common = names.isdisjoint, names.intersection
    for body, record, line in zip(raw, records, lines, strict=True):
        if body is None:  # decoded records always have their bytes (a tombstone is a dead letter)
            out.append(orjson.dumps({**record, **orjson.loads(line)}))
        elif record and disjoint(record):  # no name in common, not an empty object
            out.append(body.rstrip()[:-1] + b"," + line[1:])
        else:
            out.append(splice(body, line, common(record), len(record)))
    return out
