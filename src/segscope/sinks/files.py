"""Write scored frames to Parquet, CSV or NDJSON atomically (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from segscope.exceptions import SinkError
from segscope.sources.files import detect_format

__all__ = ["FileSink", "ListSink", "Sink", "open_sink"]


class Sink(Protocol):
    """A sink takes frames with ``write`` and finishes with ``close`` (or ``abort`` on failure)."""

    def write(self, frame: pl.DataFrame) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _flatten_nested(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV cannot hold lists or structs: nested columns become JSON text."""
    nested = [n for n, t in frame.schema.items() if isinstance(t, pl.List | pl.Struct | pl.Array)]
    if not nested:
        return frame
    return frame.with_columns(pl.col(n).map_elements(_json_text, return_dtype=pl.String) for n in nested)


def _json_text(value: Any) -> str:
    import json

    if isinstance(value, pl.Series):
        value = value.to_list()
    return json.dumps(value, default=str, separators=(",", ":"))


class FileSink:
    """Append frames to one output file; the file appears (by rename) only when ``close`` succeeds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _open(self) -> None:
        self.format_ = detect_format(self.path)
        parent = self.path.parent
        if not parent.exists():
            raise SinkError(f"{self.path}: folder {parent} does not exist; create it first")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        self.tmp_path_ = Path(tmp)
        self.handle_: IO[bytes] = os.fdopen(fd, "wb")
        self.parquet_writer_: pq.ParquetWriter | None = None
        self.rows_ = 0

    def write(self, frame: pl.DataFrame) -> None:
        if not hasattr(self, "handle_"):
            self._open()
        try:
            if self.format_ == "parquet":
                table = frame.to_arrow()
                if self.parquet_writer_ is None:
                    self.parquet_writer_ = pq.ParquetWriter(self.handle_, table.schema, compression="zstd")
                self.parquet_writer_.write_table(table.cast(self.parquet_writer_.schema))
            elif self.format_ == "csv":
                _flatten_nested(frame).write_csv(self.handle_, include_header=self.rows_ == 0)
            else:
                frame.write_ndjson(self.handle_)
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
            self.abort()
            raise SinkError(f"{self.path}: cannot write output ({exc}); check disk space and permissions") from None
        self.rows_ += frame.height

    def close(self) -> None:
        if not hasattr(self, "handle_"):
            self._open()  # no rows at all: still produce a valid (empty) file
        if self.parquet_writer_ is not None:
            self.parquet_writer_.close()
        self.handle_.flush()
        os.fsync(self.handle_.fileno())
        self.handle_.close()
        os.replace(self.tmp_path_, self.path)

    def abort(self) -> None:
        if hasattr(self, "handle_"):
            with contextlib.suppress(OSError):
                self.handle_.close()
            with contextlib.suppress(OSError):
                self.tmp_path_.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class StdoutSink:
    """NDJSON to standard output (``--out -``)."""

    def write(self, frame: pl.DataFrame) -> None:
        sys.stdout.write(frame.write_ndjson())
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.flush()

    def abort(self) -> None:
        sys.stdout.flush()


class ListSink:
    """Collects frames in memory; for tests and notebooks."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.closed = False

    def write(self, frame: pl.DataFrame) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.frames.clear()

    def frame(self) -> pl.DataFrame:
        return pl.concat(self.frames, how="vertical") if self.frames else pl.DataFrame()


def open_sink(target: str | Path) -> Sink:
    """A sink for ``target``: ``-`` is NDJSON on stdout, else a file whose extension sets the format."""
    if str(target) == "-":
        return StdoutSink()
    detect_format(target)  # fail before any work on an unknown extension
    return FileSink(target)
