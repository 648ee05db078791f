"""What `segscope stream` writes for a message: the message's own bytes, every field as it was spelled, with the
scored fields appended (decoding and encoding of the Kafka source and sink, without a broker)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segscope import SCORED_COLUMNS
from segscope._kafka import Polled
from segscope.model import Model
from segscope.sinks.splice import appended_at_once, appended_one_by_one, encode, members, splice
from segscope.sources.messages import decode
from segscope.testing.data import make_transactions

#: Fields spelled as a JSON float cannot hold them: a Python (or orjson) round trip would change every one.
SPELLED = (
    '"big": 123456789012345678901234567890, "huge": 1e400, "exact": 0.1000000000000000055511151231257827, '
    '"name": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\/", "meta": {"score": [1, {"x": "}"}], "id": null}, '
    '"negative": -0.0, "tiny": 1E-400'
)


def _messages(n: int, extra: str = SPELLED) -> list[bytes]:
    rows = make_transactions(n, seed=5).drop("is_fraud").with_columns(pl.col("ts").cast(pl.String))
    out = []
    for row in rows.iter_rows(named=True):
        own = json.dumps(row)  # the record's fields, then the hand-spelled ones, with odd spacing
        out.append(f"{own[:-1]},  {extra} }}\n".encode())
    return out


def _polled(values: list[bytes]) -> Polled:
    n = len(values)
    return Polled(
        values,  # type: ignore[arg-type]
        [f"k{i}".encode() for i in range(n)],
        [[("trace", f"t{i}".encode())] for i in range(n)],
        lambda i: ("in", 0, i, 1_700_000_000_000 + i),
        {("in", 0): n},
    )


def test_the_output_is_the_message_as_it_came_with_the_scored_fields_appended(model: Model) -> None:
    values = _messages(50)
    batch = decode(_polled(values), model.input_schema(), max_bytes=65_536)
    assert not batch.dead and batch.frame.height == 50
    outputs = encode(model.score(batch.frame), batch)
    scored = model.score(batch.frame)
    for raw, out, score, txn in zip(values, outputs, scored["score"], batch.ids or [], strict=True):
        head = raw.rstrip()[:-1]
        assert out.startswith(head)  # every byte of the message, in its order and spelling
        tail = json.loads(b"{" + out[len(head) + 1 :])  # what was appended after the message's last field
        assert list(tail) == ["id", *SCORED_COLUMNS] and tail["id"] == txn and tail["score"] == score
        assert json.loads(out, parse_int=str, parse_float=str)["big"] == "123456789012345678901234567890"


def test_a_field_with_the_name_of_a_scored_field_is_replaced_and_the_rest_kept(model: Model) -> None:
    values = _messages(3, SPELLED + ', "score": "theirs", "segment" : 7, "id": 123456789012345678901234567891')
    batch = decode(_polled(values), model.input_schema(), max_bytes=65_536)
    outputs = encode(model.score(batch.frame), batch)
    for raw, out, txn in zip(values, outputs, batch.ids or [], strict=True):
        body = raw.rstrip()
        for key, start, end in members(body):
            if key not in {"score", "segment", "id"}:
                assert body[start:end] in out  # the member's bytes, unchanged
        record = json.loads(out)
        assert record["id"] == txn and isinstance(record["score"], float) and record["score"] != "theirs"
        assert out.count(b'"score"') == 2  # segscope's, and the one nested in "meta"
        kept = [k for k in json.loads(raw) if k not in {"score", "segment", "id"}]
        assert list(record) == [*kept, "id", *SCORED_COLUMNS]  # in place of theirs, at the end


def test_an_id_field_that_is_the_id_column_is_kept_as_spelled(model: Model) -> None:
    schema = dataclasses.replace(model.input_schema(), id_column="id")
    values = [
        v[:-3] + b', "id": 12345678901234567890123456789' + str(i).encode() + b"}\n"
        for i, v in enumerate(_messages(3, '"note": 1'))
    ]
    batch = decode(_polled(values), schema, max_bytes=65_536)
    assert batch.ids == [f"12345678901234567890123456789{i}" for i in range(3)]  # the digits, not a float
    for raw, out in zip(values, encode(model.score(batch.frame), batch), strict=True):
        assert out.startswith(raw.rstrip()[:-1]) and out.count(b'"id"') == 1


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ('"amount": 1e400', "field 'amount' must be a finite number"),
        ('"amount": -1e400', "field 'amount' must be a finite number"),
        ('"amount": 1, "x": NaN', "invalid JSON"),
        ('"amount": 1, "x": 1e400, "y": NaN', "invalid JSON"),
    ],
)
def test_numbers_past_the_float_range_are_dead_letters_only_where_the_model_reads_them(
    model: Model, field: str, reason: str
) -> None:
    good = _messages(1)[0]
    row = orjson.loads(good.split(b",  ")[0] + b"}")
    row.pop("amount")
    bad = orjson.dumps(row)[:-1] + b", " + field.encode() + b"}"
    batch = decode(_polled([good, bad]), model.input_schema(), max_bytes=65_536)
    assert batch.frame.height == 1 and len(batch.dead) == 1
    assert batch.dead[0].reason.startswith(reason) and batch.dead[0].value == bad


def test_splice_handles_empty_objects_spacing_and_escaped_names() -> None:
    tail = b'{"score":0.5}'
    assert splice(b"{}", tail) == b'{"score":0.5}'
    assert splice(b"{ }\n", tail) == b'{ "score":0.5}'
    assert splice(b'{"a":1 }', tail) == b'{"a":1 ,"score":0.5}'
    assert splice(b'{"a":[1,{"b":"}"}] , "\\u0073core":2}', tail, ["score"]) == b'{"a":[1,{"b":"}"}] ,"score":0.5}'
    assert splice(b'{"score":2}', tail, ["score"]) == b'{"score":0.5}'
    assert members(b' {"a" : "x\\"}" , "b":{"c":[]}}') == [("a", 2, 15), ("b", 17, 29)]
    # the quick search is not fooled: a name spelled with escapes at the top and plainly below, a quote in a
    # name, an object value, the last member
    tail = b'{"id":"t1"}'
    assert splice(b'{"\\u0069d": 1, "x": {"id": 2}}', tail, ["id"], 2) == b'{ "x": {"id": 2},"id":"t1"}'
    assert splice(b'{"say \\"id": 3, "id": 1}', tail, ["id"], 2) == b'{"say \\"id": 3,"id":"t1"}'
    assert splice(b'{"id":{"a":1},"b":2}', tail, ["id"], 2) == b'{"b":2,"id":"t1"}'
    assert splice(b'{"b":2,"id" : "x" }', tail, ["id"], 2) == b'{"b":2,"id":"t1"}'


_TAIL = {"score": pl.Float64, "why": pl.String, "segment": pl.Int32, "reasons": pl.List(pl.Struct({"f": pl.String}))}
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=6).filter(lambda k: k not in _TAIL), _JSON, min_size=1, max_size=4),
            st.sampled_from([(None, None), (2, None), (None, (" ,", " : ")), (0, None)]),  # spacing as writers do
            st.sampled_from(["", " ", "\n", " \r\n\t"]),
            st.booleans(),
            st.floats() | st.none(),
            st.text(max_size=8) | st.none(),
            st.integers(-(2**31), 2**31 - 1) | st.none(),
            st.lists(st.fixed_dictionaries({"f": st.text(max_size=4)}), max_size=2) | st.none(),
        ),
        max_size=6,
    )
)
def test_a_batch_appended_at_once_is_byte_for_byte_what_one_at_a_time_writes(rows: list[tuple[Any, ...]]) -> None:
    """The usual poll (no message holds a name appended) is appended by Polars for the whole batch: the same
    bytes as the per-message path, for any JSON objects, spacing and scored values (NaN, infinities, nulls)."""
    raw = [
        json.dumps(record, indent=indent, separators=separators, ensure_ascii=ascii_only).encode() + end.encode()
        for record, (indent, separators), end, ascii_only, *_ in rows
    ]
    records = [orjson.loads(r) for r in raw]
    tail = pl.DataFrame([r[4:] for r in rows], schema=_TAIL, orient="row")
    at_once = appended_at_once(tail, raw)  # type: ignore[arg-type]
    assert at_once == appended_one_by_one(tail, raw, records, _TAIL)  # type: ignore[arg-type]
    for out, record, row in zip(at_once or [], records, tail.iter_rows(named=True), strict=True):
        written = json.loads(out)
        assert {k: written[k] for k in record} == record and list(written)[len(record) :] == list(_TAIL)
        assert written["why"] == row["why"] and written["segment"] == row["segment"]


def test_a_batch_with_a_message_that_is_not_utf8_is_appended_one_at_a_time() -> None:
    tail = pl.DataFrame({"score": [0.5, 0.25]})
    assert appended_at_once(tail, [b'{"a":1}', None]) is None  # no bytes: an Avro or Protobuf record
    assert appended_at_once(tail, [b'{"a":1}', b'{"a":"\xff"}']) is None
    assert appended_at_once(tail, [b'{"a":1} ', b'{"b":"\xc3\xa9"}\r\n']) == [
        b'{"a":1,"score":0.5}',
        b'{"b":"\xc3\xa9","score":0.25}',
    ]


def test_a_number_past_the_float_range_in_utf16_text_is_a_dead_letter(model: Model) -> None:
    good = _messages(1)[0]
    utf16 = good.decode().replace('"amount"', '"big": 1e400, "amount"').encode("utf-16")
    batch = decode(_polled([good, utf16]), model.input_schema(), max_bytes=65_536)
    assert batch.frame.height == 1 and len(batch.dead) == 1
    assert batch.dead[0].reason.startswith("not UTF-8 text") and batch.dead[0].value == utf16
