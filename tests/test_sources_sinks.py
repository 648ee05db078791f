from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from segscope.exceptions import SinkError, SourceError
from segscope.sinks.files import FileSink, ListSink, write_batches
from segscope.sources.files import count_rows, detect_format, iter_batches, scan_file


def test_iter_batches_keeps_order_and_bounds(tmp_path: Path) -> None:
    frame = pl.DataFrame({"i": range(10_000), "s": [str(i) for i in range(10_000)]})
    frame.write_parquet(tmp_path / "f.parquet", row_group_size=3000)
    batches = list(iter_batches(tmp_path / "f.parquet", batch_size=700))
    assert all(b.height <= 700 for b in batches)
    assert pl.concat(batches).equals(frame)
    assert count_rows(tmp_path / "f.parquet") == 10_000


@pytest.mark.parametrize("ext", ["parquet", "csv", "ndjson"])
def test_write_batches_round_trip_and_atomic_failure(tmp_path: Path, ext: str) -> None:
    frame = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    out = tmp_path / f"out.{ext}"
    assert write_batches(iter([frame, frame]), frame.schema, out) == 6
    assert pl.concat([frame, frame]).equals(
        {"parquet": pl.read_parquet, "csv": pl.read_csv, "ndjson": pl.read_ndjson}[ext](out)
    )

    def failing() -> Iterator[pl.DataFrame]:
        yield frame
        raise SourceError("boom")

    out2 = tmp_path / f"failed.{ext}"
    with pytest.raises(SourceError, match="boom"):
        write_batches(failing(), frame.schema, out2)
    assert not out2.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out.{ext}"]


def test_file_sink_is_atomic(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": [1.0], "r": [[{"f": "x", "v": 1.0}]]})
    with FileSink(tmp_path / "o.csv") as sink:
        sink.write(frame)
        assert not (tmp_path / "o.csv").exists()  # only renamed into place on close
    assert pl.read_csv(tmp_path / "o.csv")["r"][0] == '[{"f":"x","v":1.0}]'
    sink = FileSink(tmp_path / "p.parquet")
    sink.write(frame)
    sink.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv"]


def test_list_sink() -> None:
    sink = ListSink()
    sink.write(pl.DataFrame({"a": [1]}))
    sink.write(pl.DataFrame({"a": [2]}))
    sink.close()
    assert sink.closed
    assert sink.frame()["a"].to_list() == [1, 2]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown file extension"):
        detect_format("x.xls")
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(SourceError, match="is a directory"):
        scan_file(tmp_path / "d.parquet")
    with pytest.raises(SinkError, match="does not exist"):
        write_batches(iter([]), pl.Schema({"a": pl.Int64}), tmp_path / "missing" / "o.parquet")
