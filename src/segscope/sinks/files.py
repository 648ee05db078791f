"""Write scored frames to Parquet, CSV or NDJSON atomically (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from segscope.exceptions import SegscopeError, SinkError
from segscope.sources.files import detect_format

__all__ = ["FileSink", "ListSink", "Sink", "open_sink", "publish", "write_batches", "write_text_atomic"]


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
    out = []
    for name in nested:
        dtype = frame.schema[name]
        inner = dtype.inner if isinstance(dtype, pl.List | pl.Array) else None
        if isinstance(inner, pl.Struct):
            encoded = pl.col(name).list.eval(pl.element().struct.json_encode()).list.join(",")
            out.append(pl.when(pl.col(name).is_null()).then(None).otherwise(pl.format("[{}]", encoded)).alias(name))
        else:
            out.append(pl.col(name).map_elements(_json_text, return_dtype=pl.String))
    return frame.with_columns(out)


def _json_text(value: Any) -> str:
    import json

    if isinstance(value, pl.Series):
        value = value.to_list()
    return json.dumps(value, default=str, separators=(",", ":"))


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file in the target's folder (so the final rename is atomic), or a one-line SinkError."""
    if path.is_dir():
        raise SinkError(f"{path} is a folder; pass a file name for the output (e.g. {path / 'out.parquet'})")
    parent = path.parent
    if not parent.exists():
        raise SinkError(f"{path}: folder {parent} does not exist; create it first")
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        reason = exc.strerror or exc
        raise SinkError(f"{path}: cannot write in {parent} ({reason}); choose a folder you can write to") from None


class FileSink:
    """Append frames to one output file; the file appears (by rename) only when ``close`` succeeds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _open(self) -> None:
        self.format_ = detect_format(self.path)
        fd, tmp = _temporary_beside(self.path)
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
        publish(self.tmp_path_, self.path)

    def abort(self) -> None:
        if hasattr(self, "handle_"):
            if self.parquet_writer_ is not None:
                with contextlib.suppress(Exception):
                    self.parquet_writer_.close()
                self.parquet_writer_ = None
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


# read once at import (setting the umask to read it is not thread-safe)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temporary file or folder into place, with the permissions a plain create would give
    (mkstemp/mkdtemp make them private)."""
    os.chmod(tmp, (0o777 if Path(tmp).is_dir() else 0o666) & ~_UMASK)
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file whole or not at all (temporary sibling, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_batches(batches: Iterator[pl.DataFrame], schema: pl.Schema, path: str | Path) -> int:
    """Stream ``batches`` (all with ``schema``) into one file with Polars' own writers, atomically.

    The batches feed a lazy Polars source that is sunk to a temporary file in the target folder, renamed into
    place only when every batch was written; memory stays bounded by a batch.
    """
    from polars.io.plugins import register_io_source

    path = Path(path)
    fmt = detect_format(path)
    fd, tmp_name = _temporary_beside(path)
    os.close(fd)
    tmp = Path(tmp_name)
    nested = fmt == "csv"
    out_schema = pl.Schema(
        {n: (pl.String() if nested and isinstance(t, pl.List | pl.Struct | pl.Array) else t) for n, t in schema.items()}
    )
    rows = 0

    def source(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        nonlocal rows
        for frame in batches:
            rows += frame.height
            yield _flatten_nested(frame) if nested else frame

    lazy = register_io_source(source, schema=out_schema)
    try:
        if fmt == "parquet":
            lazy.sink_parquet(tmp, compression="zstd", compression_level=1)  # level 1: same size here, 30% faster
        elif fmt == "csv":
            lazy.sink_csv(tmp)
        else:
            lazy.sink_ndjson(tmp)
        publish(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, SegscopeError):  # a source's or a check's own error, raised through the writer
            raise
        reason = exc.strerror or exc
        raise SinkError(f"{path}: cannot write output ({reason}); check disk space and permissions") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return rows


def open_sink(target: str | Path) -> Sink:
    """A sink for ``target``: ``-`` is NDJSON on stdout, else a file whose extension sets the format."""
    if str(target) == "-":
        return StdoutSink()
    detect_format(target)  # fail before any work on an unknown extension
    return FileSink(target)
