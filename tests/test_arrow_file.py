"""Arrow files read with a bound on what they unpack to (``segscope._arrow_file``): every file Polars or pyarrow
writes, whatever its compression, reads as it was written; a file whose buffers declare more than the bound is
refused before anything is unpacked; damaged bytes are a refusal, never a crash or a hang."""

from __future__ import annotations

import io
import random

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from segscope._arrow_file import ArrowFileError, read_arrow_file, unpacked_bytes
from tests.fuzz_bundle import arrow_bomb


def _frame(rows: int = 2_000) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    return pl.DataFrame(
        {
            "key": [f"machine-{i}" for i in range(rows)],
            "acc": rng.normal(size=(rows, 6)),
            "n_events": rng.integers(0, 1_000, rows),
            "pair_value": [[1, 2, 3]] * rows,
        },
        schema_overrides={"acc": pl.Array(pl.Float64, 6)},
    )


@pytest.mark.parametrize("compression", ["lz4", "zstd", "uncompressed"])
def test_what_polars_writes_reads_back_whole(compression: str) -> None:
    frame = _frame()
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression=compression)  # type: ignore[arg-type]
    data = buffer.getvalue()
    acc_bytes = frame.height * 6 * 8
    assert acc_bytes < unpacked_bytes(data) < 4 * acc_bytes  # the values, keys, offsets and lists, not far more
    read = pl.from_arrow(read_arrow_file(data, 1 << 30))
    assert isinstance(read, pl.DataFrame)
    assert_frame_equal(read, frame)


def test_what_pyarrow_writes_in_several_batches_reads_back_whole() -> None:
    table = pa.table({"a": list(range(1_000)), "s": ["x" * (i % 7) for i in range(1_000)]})
    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=300)
    assert read_arrow_file(sink.getvalue(), 1 << 20).equals(table)


def test_a_file_that_asks_for_more_than_the_bound_is_refused_before_it_is_unpacked() -> None:
    buffer = io.BytesIO()
    _frame().write_ipc(buffer, compression="lz4")
    bomb = arrow_bomb(buffer.getvalue())  # a terabyte declared: Arrow would try to allocate it
    assert unpacked_bytes(bomb) > 1 << 40
    with pytest.raises(ArrowFileError, match=r"unpack to 1,099,511,\d{3},\d{3} bytes, more than the 1,048,576 allowed"):
        read_arrow_file(bomb, 1 << 20)
    zeros = io.BytesIO()
    pl.DataFrame({"z": np.zeros(2_000_000)}).write_ipc(zeros, compression="zstd")  # 16 MB in a few kilobytes
    assert len(zeros.getvalue()) < 1 << 16
    with pytest.raises(ArrowFileError, match="16,000,000 bytes"):
        read_arrow_file(zeros.getvalue(), 1 << 20)


def test_damaged_bytes_are_a_refusal_never_a_crash() -> None:
    buffer = io.BytesIO()
    _frame(300).write_ipc(buffer, compression="lz4")
    data = buffer.getvalue()
    rng = random.Random(11)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(1_500):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cut = bytes(damaged[: rng.randrange(len(damaged))]) if rng.random() < 0.2 else bytes(damaged)
        try:
            read_arrow_file(cut, 1 << 24)
            outcomes["read"] += 1
        except (pa.ArrowException, ValueError, OSError, TypeError):  # what the state readers turn into one line
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300 and sum(outcomes.values()) == 1_500, outcomes
