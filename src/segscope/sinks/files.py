"""Scored frames to a Parquet, CSV or NDJSON file (the format by extension), written to a temporary file that is
renamed into place only when complete; or NDJSON to standard output (``-``)."""

from __future__ import annotations

import fcntl
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import polars as pl

from segscope._io import detect_format, publish
from segscope.exceptions import SinkError
from segscope.sinks.base import Sink
from segscope.sources.base import Batch

__all__ = ["FileSink", "StdoutSink", "open_sink", "write_frame"]


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


def _temporary_beside(path: Path) -> tuple[Path, int]:
    """A temporary folder in the target's folder (so the final rename is atomic), locked while this run writes in
    it (the open descriptor returned holds the lock), or a one-line SinkError. The file is written inside it: on
    abort the folder goes, and a Polars writer task that opens the file after it returned (its streaming engine
    tears down asynchronously) cannot leave one behind. Folders that earlier runs to the same output left (a run
    killed before it could clean up) are removed on the way."""
    if path.is_dir():
        raise SinkError(f"{path} is a folder; pass a file name for the output (e.g. {path / 'out.parquet'})")
    parent = path.parent
    if not parent.exists():
        raise SinkError(f"{path}: folder {parent} does not exist; create it first")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        reason = exc.strerror or exc
        raise SinkError(f"{path}: cannot write in {parent} ({reason}); choose a folder you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a file system without locks (some network mounts): leftovers cannot be told from live runs
        return tmp, fd
    _remove_left_behind(path, tmp)
    return tmp, fd


#: a temporary folder this much older than its last change, and whose lock nobody holds, was left by a run that
#: ended without cleaning up (the age covers the instant between a folder's creation and its lock)
_LEFT_FOR = 60.0


def _remove_left_behind(path: Path, own: Path) -> None:
    """Remove the temporary folders of earlier runs to ``path`` whose run is gone (killed: SIGKILL, a power cut)."""
    name = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for old in path.parent.iterdir():
        if old == own or not name.fullmatch(old.name):
            continue
        try:
            fd = os.open(old, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # a link, a file, or gone already
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < _LEFT_FOR:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while a run holds it
            shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
        finally:
            os.close(fd)


class _Stop(Exception):
    """Raised into the writer's frame stream by ``abort``."""


class FileSink:
    """Append frames to one output file; the file appears (by rename) only when ``close`` succeeds.

    Frames are written by Polars' own streaming writers (``sink_parquet``/``sink_csv``/``sink_ndjson``, fed from
    a queue in a writer thread), so every Polars type is written as Polars writes it, memory stays bounded by a
    couple of frames, and scoring the next batch overlaps writing this one.
    """

    #: nothing is seen before :meth:`close` (the capability :class:`segscope.run.AllOrNothing`)
    all_or_nothing = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _open(self, schema: pl.Schema) -> None:
        from polars.io.plugins import register_io_source

        self.format_ = detect_format(self.path)
        self.tmp_dir_, self.lock_ = _temporary_beside(self.path)
        self.tmp_path_ = self.tmp_dir_ / self.path.name
        nested = self.format_ == "csv"  # CSV cannot hold lists or structs: they become JSON text
        nested_types = pl.List | pl.Struct | pl.Array
        flattened = {n: pl.String() for n, t in schema.items() if nested and isinstance(t, nested_types)}
        self.schema_ = pl.Schema({n: flattened.get(n, t) for n, t in schema.items()})
        self.queue_: queue.Queue[pl.DataFrame | _Stop | None] = queue.Queue(maxsize=2)
        self.error_: BaseException | None = None

        def frames(*_: Any) -> Iterator[pl.DataFrame]:
            while True:
                item = self.queue_.get()
                if item is None:
                    return
                if isinstance(item, _Stop):
                    raise item
                yield _flatten_nested(item) if nested else item

        lazy = register_io_source(frames, schema=self.schema_)
        self.thread_ = threading.Thread(target=self._run, args=(lazy,), name="segscope-writer", daemon=True)
        self.thread_.start()

    def _run(self, lazy: pl.LazyFrame) -> None:
        try:
            if self.format_ == "parquet":
                # snappy: what Spark, Hive and DuckDB write and read by default; 1.4x faster to write than zstd-1
                # on scored rows (their reasons), for files about 15% larger
                lazy.sink_parquet(self.tmp_path_, compression="snappy")
            elif self.format_ == "csv":
                lazy.sink_csv(self.tmp_path_)
            else:
                lazy.sink_ndjson(self.tmp_path_)
        except BaseException as exc:  # reported by write/close in the caller's thread
            self.error_ = exc
            while True:  # let a caller blocked on a full queue go on
                try:
                    self.queue_.get_nowait()
                except queue.Empty:
                    break

    def _raise_if_failed(self) -> None:
        if self.error_ is not None and not isinstance(self.error_, _Stop):
            error = self.error_
            self.abort()
            reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:200]
            raise SinkError(f"{self.path}: cannot write output ({reason}); check disk space and permissions")

    def write(self, frame: pl.DataFrame, batch: Batch | None = None) -> None:
        if not hasattr(self, "queue_"):
            self._open(frame.schema)
            self.first_schema_ = frame.schema
        self._raise_if_failed()
        if frame.schema != self.first_schema_:  # one file has one schema: later batches take the first one's types
            try:
                frame = frame.cast(dict(self.first_schema_), strict=True)  # type: ignore[arg-type]
            except pl.exceptions.PolarsError:
                changed = [n for n in frame.columns if frame.schema[n] != self.first_schema_.get(n)]
                self.abort()
                raise SinkError(
                    f"{self.path}: column(s) {changed[:5]} change type part-way through the input; convert the "
                    "input to Parquet with explicit types, or make those values consistent"
                ) from None
        self._put(frame)

    def _put(self, item: pl.DataFrame | _Stop | None) -> None:
        """Hand ``item`` to the writer, unless it stopped (then its error is raised by the caller's check)."""
        while self.thread_.is_alive():
            try:
                self.queue_.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def flush(self) -> None:
        self._raise_if_failed()

    def close(self, schema: pl.Schema | None = None) -> None:
        """Finish the file and rename it into place. With no rows written, an empty file of ``schema``."""
        if not hasattr(self, "queue_"):
            self._open(schema if schema is not None else pl.Schema())
        self._put(None)
        self.thread_.join()
        self._raise_if_failed()
        try:
            publish(self.tmp_path_, self.path)
        except OSError as exc:
            self.abort()
            raise SinkError(f"{self.path}: cannot write output ({exc.strerror or exc}); check disk space") from None
        self._release()

    def abort(self) -> None:
        if hasattr(self, "queue_"):
            self._put(_Stop())
            self.thread_.join()
            self._release()

    def _release(self) -> None:
        """The temporary folder removed, then its lock let go (once)."""
        shutil.rmtree(self.tmp_dir_, ignore_errors=True)
        if self.lock_ >= 0:
            os.close(self.lock_)
            self.lock_ = -1

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
    """NDJSON to standard output (``--out -``); it streams: what was written stays written."""

    def write(self, frame: pl.DataFrame, batch: Batch | None = None) -> None:
        sys.stdout.write(frame.write_ndjson())
        sys.stdout.flush()

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.flush()

    def abort(self) -> None:
        sys.stdout.flush()


def open_sink(target: str | Path) -> Sink:
    """A sink for ``target``: ``-`` is NDJSON on stdout, else a file whose extension sets the format."""
    if str(target) == "-":
        return StdoutSink()
    detect_format(target)  # fail before any work on an unknown extension
    return FileSink(target)


def write_frame(frame: pl.DataFrame, path: str | Path) -> None:
    """Write one frame to ``path`` (format by extension), whole or not at all."""
    with FileSink(path) as sink:
        sink.write(frame)
