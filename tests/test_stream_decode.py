"""Decoding a poll of JSON messages takes a fast way when every message is a record (one parse of the poll, the
poll's own lists, date-times read by NumPy) and looks at each message otherwise: both ways give the same rows, ids,
types and dead letters, whatever the messages hold."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from segscope._kafka import Polled
from segscope.schema import ColumnSpec, FeatureSchema
from segscope.sources import messages as messages_module
from segscope.sources.messages import _check, _column, decode

TS = ColumnSpec("ts", "datetime", "Datetime(time_unit='us', time_zone=None)")
SCHEMA = FeatureSchema(
    (TS, ColumnSpec("amount", "numeric", "Float64"), ColumnSpec("country", "categorical", "String"),
     ColumnSpec("present", "boolean", "Boolean")),
    ("amount", "country", "present"),
    id_column="txn",
)  # fmt: skip

digits = st.integers(0, 99).map(lambda v: f"{v:02d}")
#: date-times as producers write them, and near misses: days and hours that do not exist, year 0, other
#: separators, fractions of any length, zones, trailing text, dates alone
datetimes = st.one_of(
    st.builds(
        lambda y, mo, d, sep, h, mi, s, frac, tail: f"{y:04d}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{tail}",
        st.integers(0, 9999),
        st.sampled_from(["01", "02", "12", "13", "00"]) | digits,
        st.sampled_from(["01", "28", "29", "30", "31", "00"]) | digits,
        st.sampled_from(["T", " ", "t", "_"]),
        st.sampled_from(["00", "23", "24"]) | digits,
        st.sampled_from(["00", "59", "60"]),
        st.sampled_from(["00", "59", "60"]),
        st.sampled_from(["", ".1", ".123", ".123456", ".1234567", ",5", "."]),
        st.sampled_from(["", "", "", "Z", "+01:00", " ", "\n", "x"]),
    ),
    st.sampled_from(["2026-01-01", "now", "2026", "2026-01-01T12", "NaT", "", "\u0662026-01-01 00:00:00"]),
)


def _reference(values: list[object]) -> tuple[pl.Series, list[str | None]]:
    """Each value read on its own (what decoding does when the fast ways do not apply)."""
    checked = [_check(v, TS) for v in values]
    series = pl.Series("ts", [c[0] for c in checked], dtype=pl.Int64).cast(pl.Datetime("us"))
    return series, [c[1] for c in checked]


@settings(max_examples=300, deadline=None)
@given(st.lists(datetimes, min_size=1, max_size=6), st.lists(st.integers(0, 9999), max_size=3))
def test_date_times_read_at_once_are_those_read_one_by_one(values: list[str], plain: list[int]) -> None:
    # a poll mostly of well-formed date-times (the fast way), with the generated ones among them
    values = [f"{2000 + v % 30}-0{1 + v % 9}-1{v % 10} 0{v % 10}:1{v % 10}:2{v % 10}.{v}" for v in plain] + values
    errors: list[str | None] = [None] * len(values)
    got = _column(list(values), TS, errors)
    expected, expected_errors = _reference(list(values))
    assert errors == expected_errors
    assert got.dtype == pl.Datetime("us")
    assert got.to_list() == expected.to_list()


def test_well_formed_date_times_are_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [
        "2026-01-01 12:07:14.389234",
        "0001-01-01T00:00:00",
        "9999-12-31 23:59:59.999999",
        "2024-02-29T00:00:00.1",
    ]
    expected = [datetime.fromisoformat(v) for v in values]

    class Refusing(datetime):  # the value-by-value way, were it taken, would refuse them all
        @classmethod
        def fromisoformat(cls, text: str) -> datetime:
            raise ValueError(text)

    monkeypatch.setattr(messages_module, "datetime", Refusing)
    errors: list[str | None] = [None] * 4
    assert _column(values, TS, errors).to_list() == expected and errors == [None] * 4
    monkeypatch.undo()
    errors = [None, None]
    assert _column(["0000-01-01 00:00:00", "2026-02-29 00:00:00"], TS, errors).to_list() == [None, None]
    assert errors == [
        "field 'ts' is not an ISO-8601 date/time: '0000-01-01 00:00:00'",
        "field 'ts' is not an ISO-8601 date/time: '2026-02-29 00:00:00'",
    ]


def _polled(values: list[bytes | None]) -> Polled:
    n = len(values)
    return Polled(values, [f"k{i}".encode() for i in range(n)], [[("h", bytes([i % 256]))] for i in range(n)],
                  lambda i: ("in", 0, 100 + i, 7), {("in", 0): 100 + n})  # fmt: skip


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                    st.text(max_size=5), st.just([1]), st.just({"a": 1}))  # fmt: skip
records = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.one_of(datetimes, scalars),
        "amount": st.one_of(st.floats(-1e6, 1e6), st.integers(-(10**6), 10**6), scalars),
        "country": st.one_of(st.sampled_from(["US", "FR"]), scalars),
        "present": st.one_of(st.booleans(), scalars),
        "txn": st.one_of(st.text(min_size=1, max_size=4), st.integers(0, 10**30), scalars),
        "other": scalars,
    },
)


#: messages: records (the standard library's JSON: integers past 64 bits, Infinity, which is not JSON), and
#: what is not a record: arrays, text, numbers past the float range, messages past the size limit
messages = st.one_of(
    records.map(lambda r: json.dumps(r).encode()),
    st.sampled_from([b"[1]", b"not json", b'{"amount": 1e400, "txn": "a"}', b"{}", b'{"txn": "' + b"x" * 300 + b'"}']),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, min_size=1, max_size=8))
def test_a_poll_decodes_to_the_same_rows_however_it_is_read(values: list[bytes | None]) -> None:
    """The same messages decoded as they are and with a tombstone after them (which sends every message the
    slow way): the same rows, ids, keys, headers, records, bytes and dead letters."""
    fast = decode(_polled(values), SCHEMA, max_bytes=300)
    slow = decode(_polled([*values, None]), SCHEMA, max_bytes=300)
    assert [d.reason for d in slow.dead[:-1]] == [d.reason for d in fast.dead]
    assert slow.dead[-1].reason.startswith("tombstone") and [d.offset for d in slow.dead[:-1]] == [
        d.offset for d in fast.dead
    ]
    assert_frame_equal(fast.frame, slow.frame)
    assert fast.frame.schema == pl.Schema(
        {"ts": pl.Datetime("us"), "amount": pl.Float64, "country": pl.String, "present": pl.Boolean}
    )
    for name in ("ids", "keys", "headers", "records", "raw"):
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.origin is not None and slow.origin is not None
    assert [fast.origin(j) for j in range(fast.frame.height)] == [slow.origin(j) for j in range(slow.frame.height)]


def test_messages_nested_past_what_the_standard_library_reads_are_no_crash() -> None:
    """orjson reads 1,024 levels, Python's json about 1,000: a float id (its digits read again by json) or a
    number past the float range (the message read by json) in such a message is a row or a dead letter."""
    nest, rest = b"[" * 1010 + b"]" * 1010, b'"ts": "2026-01-01 00:00:00", "country": "US", "present": true'
    values: list[bytes | None] = [
        b'{"amount": 1, "txn": 1.5, "x": ' + nest + b", " + rest + b"}",
        b'{"amount": 1e400, "txn": "a", "x": ' + nest + b", " + rest + b"}",
        b'{"amount": 2, "txn": "b", ' + rest + b"}",
    ]
    batch = decode(_polled(values), SCHEMA, max_bytes=65_536)
    assert batch.ids == ["1.5", "b"] and batch.frame.height == 2
    assert [d.offset for d in batch.dead] == [101] and batch.dead[0].reason.startswith("invalid JSON")
