"""Parquet, CSV and NDJSON files as lazy Polars scans, so large files are read in bounded memory."""

from __future__ import annotations

import codecs
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from segscope._io import detect_format
from segscope.exceptions import SegscopeWarning, SourceError
from segscope.sources.base import Batch
from segscope.sources.frames import (
    check_ids_present,
    check_ids_unique,
    duplicate_id_error,
    null_id_error,
    parse_date_columns,
    parse_dates,
)

__all__ = [
    "CSV_INFER_ROWS",
    "FileSource",
    "check_csv",
    "check_file_ids",
    "count_rows",
    "estimate_rows",
    "iter_batches",
    "read_file",
    "sample_rows",
    "scan_file",
    "type_text_columns",
    "warn_other_separator",
]

#: CSV type inference looks at this many rows; a column that changes type later is reported clearly.
CSV_INFER_ROWS = 50_000


def _describe(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if "utf-8" in text.lower() or "utf8" in text.lower():
        return "it is not UTF-8 text (latin-1 or another encoding?); convert it, e.g. iconv -f latin1 -t utf-8"
    return text[:300]


def _csv_header(path: Path) -> list[str]:
    """The header's column names (first line, CSV quoting rules)."""
    import csv

    with path.open("rb") as fh:
        first = fh.readline(1 << 20)
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: cannot read it as csv ({_describe(ValueError('utf-8'))})") from None
    return next(csv.reader([text.rstrip("\r\n")]), [])


_CHECKED: dict[tuple[str, int, int], None] = {}

#: The ragged-row check reads a CSV file in chunks of this many bytes: its memory stays bounded whatever the file.
CSV_CHECK_CHUNK = 1 << 22


def check_csv(path: str | Path) -> None:
    """Refuse a CSV that Polars would read silently wrong: a column named twice (Polars renames the second) and
    records with fewer or more fields than the header (Polars fills them with nulls, a blank line included, or
    stops). Fields are counted per record, not per line: a quoted field may hold separators and newlines
    (RFC 4180). The file is also checked to be UTF-8 throughout. Checked once per file version."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _CHECKED:
        return
    header = _csv_header(path)
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise SourceError(f"{path}: column(s) {twice} appear twice in the header; rename or remove the repeats")
    try:
        ragged = _first_ragged(path, len(header))
    except OSError as exc:
        raise SourceError(f"{path}: cannot read it as csv ({_describe(exc)}); check the file") from None
    if ragged is not None:
        raise SourceError(f"{path}: {_ragged_message(ragged, len(header))}")
    _CHECKED[key] = None


class _Ragged(NamedTuple):
    """A record whose field count is not the header's."""

    line: int  # the line it starts on (1-based; the header is on line 1)
    last_line: int  # the line it ends on
    record: int  # its number (the header is record 0)
    fields: int | None  # fields found; None: a quote opened in it is never closed
    blank: bool  # an empty line


def _ragged_message(r: _Ragged, expected: int) -> str:
    if r.fields is None:
        return (
            f'the record starting on line {r.line} opens a quoted field that is never closed (an unmatched " in '
            "that row?); close or remove the quote and retry"
        )
    if r.blank:
        return (
            f"line {r.line} is blank but the header has {expected} fields (it would be read as a row of nulls); "
            "remove blank lines and retry"
        )
    if r.last_line > r.line:
        where = f"lines {r.line}-{r.last_line} (record {r.record}, a quoted field spans lines) have"
    else:
        where = f"line {r.line}{f' (record {r.record})' if r.record != r.line - 1 else ''} has"
    return (
        f"{where} {r.fields} fields but the header has {expected}; fix that row (a missing or extra separator?) "
        "and retry"
    )


def _first_ragged(path: Path, expected: int, *, chunk_size: int = CSV_CHECK_CHUNK) -> _Ragged | None:
    """The first record after the header without ``expected`` fields, or None; also refuses non-UTF-8 bytes.

    One pass over the file in chunks of ``chunk_size`` bytes, vectorised per chunk: a quote toggles "inside a
    quoted field" (a doubled quote toggles twice, so stays inside), separators and newlines count only outside
    quotes, and a record ends at a newline outside quotes. This is how Polars splits records too; where a stray
    quote makes its field parser disagree, Polars refuses the file itself.
    """
    utf8 = codecs.getincrementaldecoder("utf-8")()
    inside = 0  # inside a quoted field where the chunk starts
    done = 0  # records finished (the header is record 0)
    seps = 0  # separators counted so far in the unfinished record
    start = 1  # the line the unfinished record starts on
    blank = True  # the unfinished record has nothing but carriage returns so far
    lines = 0  # newlines before the chunk
    with path.open("rb") as fh:
        while data := fh.read(chunk_size):
            if not data.isascii() or utf8.getstate()[0]:
                _check_utf8(utf8, data, path, lines)
            a = np.frombuffer(data, dtype=np.uint8)
            newlines = np.flatnonzero(a == 10)
            if inside or b'"' in data:
                state = np.bitwise_xor.accumulate((a == 34).view(np.uint8)) ^ np.uint8(inside)
                outside = state == 0
                ends = newlines[outside[newlines]]
                commas = np.flatnonzero((a == 44) & outside)
                inside = int(state[-1])
            else:
                ends, commas = newlines, np.flatnonzero(a == 44)
            if len(ends):
                before = np.searchsorted(commas, ends)  # separators before each record's end
                fields = np.diff(before, prepend=0) + 1
                fields[0] += seps
                bad = np.flatnonzero(fields != expected)
                bad = bad[done + bad > 0]  # not the header
                if len(bad):
                    i = int(bad[0])
                    begin = int(ends[i - 1]) + 1 if i else 0
                    first = lines + int(np.searchsorted(newlines, begin)) + 1 if i else start
                    empty = not data[begin : int(ends[i])].strip(b"\r") and (blank or i > 0)
                    last = lines + int(np.searchsorted(newlines, ends[i])) + 1
                    return _Ragged(first, last, done + i, int(fields[i]), empty)
                done += len(ends)
                seps = len(commas) - int(before[-1])
                start = lines + int(np.searchsorted(newlines, ends[-1])) + 2
                blank = not data[int(ends[-1]) + 1 :].strip(b"\r")
            else:
                seps += len(commas)
                blank = blank and not data.strip(b"\r")
            lines += len(newlines)
    _check_utf8(utf8, b"", path, lines, final=True)
    if inside:
        return _Ragged(start, lines + 1, done, None, False)
    if done and not blank and seps + 1 != expected:  # a last record without a newline at the end
        return _Ragged(start, lines + 1, done, seps + 1, False)
    return None


def _check_utf8(
    decoder: codecs.IncrementalDecoder, data: bytes, path: Path, lines: int, *, final: bool = False
) -> None:
    """Feed ``data`` to the incremental UTF-8 decoder; a bad byte is a one-line error naming its line."""
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError as exc:
        at = max(0, exc.start - (len(exc.object) - len(data)))
        line = lines + data.count(b"\n", 0, at) + 1
        raise SourceError(
            f"{path}: cannot read it as csv (line {line}: {_describe(ValueError('utf-8'))}); check the file"
        ) from None


_SCHEMAS: dict[tuple[Any, ...], pl.Schema] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def scan_file(path: str | Path, *, dtypes: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
    """Lazily scan a data file; problems with the file itself are raised here, not at collect time.

    CSV is read without guessing dates (Polars' date guessing costs more than the rest of the read); in CSV and
    NDJSON, columns named in ``dtypes`` get those types, the others are inferred once per file version and the
    result is reused by every later scan of the file. Which text columns hold dates is decided where it matters:
    at fit (:func:`~segscope.sources.frames.parse_dates`) and, at score time, by the bundle's schema.
    """
    path = Path(path)
    fmt = detect_format(path)
    if not path.exists():
        raise SourceError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory; pass a data file (.parquet, .csv, .ndjson)")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty; pass a file with a header and at least one row")
    if fmt == "csv":
        check_csv(path)
    if fmt == "ndjson" and any(c in path.name for c in "*?["):  # Polars reads such a name as a pattern
        raise SourceError(f"{path}: NDJSON file names with *, ? or [ are read as patterns; rename the file")
    try:
        # a name is one file, never a pattern: '[ab].csv' must not read a.csv and b.csv
        if fmt == "parquet":
            lf = pl.scan_parquet(path, glob=False)
        else:
            key = (*_file_key(path), tuple(sorted((dtypes or {}).items(), key=lambda kv: kv[0])))
            known = _SCHEMAS.get(key)
            if fmt == "csv" and known is not None:
                lf = pl.scan_csv(path, schema=known, glob=False)
            elif fmt == "csv":
                header = _csv_header(path)
                overrides = {k: v for k, v in (dtypes or {}).items() if k in header}
                lf = pl.scan_csv(path, infer_schema_length=CSV_INFER_ROWS, schema_overrides=overrides, glob=False)
            elif known is not None:
                lf = pl.scan_ndjson(path, schema=known)
            else:  # inferred, then the known types over the columns it has (a model's column may be missing)
                inferred = pl.scan_ndjson(path, infer_schema_length=CSV_INFER_ROWS).collect_schema()
                lf = pl.scan_ndjson(
                    path, schema={**inferred, **{k: v for k, v in (dtypes or {}).items() if k in inferred}}
                )
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SourceError(f"{path}: cannot read it as {fmt} ({_describe(exc)}); check the file") from None
    if len(schema) == 0:
        raise SourceError(f"{path}: the file has no columns; pass a file with a header and at least one row")
    if fmt != "parquet":
        _SCHEMAS[key] = schema
    return lf


def _collect(lf: pl.LazyFrame, path: str | Path, *, streaming: bool = False) -> pl.DataFrame:
    try:
        return lf.collect(engine="streaming") if streaming else lf.collect()
    except pl.exceptions.ComputeError as exc:
        raise SourceError(
            f"{path}: cannot read it ({_describe(exc)}); if a column changes type part-way through, "
            "fix those values or convert the file to Parquet with explicit types"
        ) from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SourceError(f"{path}: cannot read it ({_describe(exc)}); check the file") from None


def read_file(path: str | Path, *, columns: list[str] | None = None) -> pl.DataFrame:
    """Read a whole data file into memory (dates in text formats parsed:
    :func:`~segscope.sources.frames.parse_dates`)."""
    lf = scan_file(path)
    if columns is not None:
        lf = lf.select(columns)
    frame = _collect(lf, path)
    if frame.height == 0:
        raise SourceError(f"{path}: the file has a header but no rows; pass a file with at least one row")
    return parse_dates(frame) if detect_format(path) != "parquet" else frame


def count_rows(path: str | Path) -> int:
    """Count rows without loading the data."""
    return int(_collect(scan_file(path).select(pl.len()), path).item())


def estimate_rows(path: str | Path, *, sample_bytes: int = 1 << 20, windows: int = 16) -> int | None:
    """Rows of the file for a progress bar, without a pass over it: Parquet's footer holds the count; a text file's
    size over the mean length of its lines in ``windows`` stretches spread over the file (``sample_bytes`` read in
    all; exact for a file that small, up to quoted line breaks). None when no line ends in them."""
    if detect_format(path) == "parquet":
        return count_rows(path)
    header = 1 if detect_format(path) == "csv" else 0
    lines = read = 0
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            if size <= sample_bytes:
                whole = file.read()
                return max(whole.count(b"\n") + (not whole.endswith(b"\n") and bool(whole.strip())) - header, 0)
            width = sample_bytes // windows
            for i in range(windows):
                file.seek((size - width) * i // (windows - 1))
                chunk = file.read(width)
                first = 0 if i == 0 else chunk.find(b"\n") + 1  # from the first whole line
                last = chunk.rfind(b"\n") + 1
                if 0 < first < last:
                    lines += chunk.count(b"\n", first, last)
                    read += last - first
                elif i == 0 and last:
                    lines, read = chunk.count(b"\n", 0, last), last
    except OSError:
        return None  # the run says what is wrong with the file
    if not lines:
        return None
    return max(round(size * lines / read) - header, 1)


def sample_rows(path: str | Path, total: int, max_rows: int, seed: int) -> pl.DataFrame:
    """A uniform sample of at most ``max_rows`` of the file's ``total`` rows, in file order."""
    if total <= max_rows:
        return read_file(path)
    keep = np.sort(np.random.default_rng(seed).choice(total, size=max_rows, replace=False))
    lf = (
        scan_file(path)
        .with_row_index("__segscope_row")
        .filter(pl.col("__segscope_row").is_in(pl.Series(keep, dtype=pl.get_index_type())))
    )
    frame = _collect(lf.drop("__segscope_row"), path, streaming=True)
    return parse_dates(frame) if detect_format(path) != "parquet" else frame


def iter_batches(
    path: str | Path, *, batch_size: int = 200_000, dtypes: dict[str, pl.DataType] | None = None
) -> Iterator[pl.DataFrame]:
    """Yield the file as frames of at most ``batch_size`` rows, in file order, in bounded memory."""
    lf = scan_file(path, dtypes=dtypes)
    try:
        for batch in lf.collect_batches(chunk_size=batch_size, maintain_order=True):
            if batch.height:
                yield from batch.iter_slices(batch_size) if batch.height > batch_size else (batch,)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{path}: cannot read it ({_describe(exc)}); check the file") from None


def check_file_ids(path: str | Path, id_column: str) -> None:
    """Refuse null or duplicate ids in a file (labels refer to ids, so each must name one record), naming the
    first offending row of the file, without loading the data (a frame in memory:
    :func:`~segscope.sources.frames.check_unique_ids`)."""
    lf = scan_file(path)
    stats = _collect(
        lf.select(
            pl.len().alias("n"), pl.col(id_column).n_unique().alias("u"), pl.col(id_column).null_count().alias("z")
        ),
        path,
        streaming=True,
    )
    n, unique, nulls = (int(stats[c][0]) for c in ("n", "u", "z"))
    if nulls:
        row = _collect(
            lf.with_row_index("__row").filter(pl.col(id_column).is_null()).select("__row").head(1), path, streaming=True
        ).item()
        raise null_id_error(id_column, row)
    if unique != n:
        dups = _collect(
            lf.with_row_index("__row").filter(pl.col(id_column).is_duplicated()).select("__row", id_column),
            path,
            streaming=True,
        )
        value = dups[id_column][0]
        raise duplicate_id_error(id_column, value, int((dups[id_column] == value).sum()), dups["__row"][0])


class FileSource:
    """A Parquet, CSV or NDJSON file read lazily in batches of at most ``batch_size`` rows (bounded memory).

    For text formats, ``dtypes`` gives the types of the columns a model knows (read as such, nothing guessed) and
    ``dates`` the text columns that hold dates there (parsed per batch when every value reads as a date; when
    one does not, the column stays text and the model's checks name the row). A value that does not fit its
    type makes the source read those columns as text instead, for the same reason. With ``id_column``, a null id
    is refused in its batch and an id that names two records after the last batch (before anything is published).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 200_000,
        dtypes: dict[str, pl.DataType] | None = None,
        dates: tuple[str, ...] = (),
        id_column: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.dtypes = dtypes
        self.dates = dates
        self.id_column = id_column

    @property
    def schema(self) -> pl.Schema:
        return scan_file(self.path, dtypes=self._dtypes()).collect_schema()

    def _dtypes(self) -> dict[str, pl.DataType] | None:
        return self.dtypes if detect_format(self.path) != "parquet" else None

    def open(self) -> None:
        scan_file(self.path, dtypes=self._dtypes())  # a missing, empty or unreadable file fails here, first

    def iter_batches(self) -> Iterator[Batch]:
        if self.id_column is None:
            yield from self._batches()
            return
        ids = []
        for batch in self._batches():
            column = batch.frame.get_column(self.id_column)
            check_ids_present(column, self.id_column, start=batch.start)
            ids.append(column)
            yield batch
        if ids:
            check_ids_unique(pl.concat(ids), self.id_column)

    def _batches(self) -> Iterator[Batch]:
        start = 0
        dtypes = self._dtypes()
        try:
            for frame in iter_batches(self.path, batch_size=self.batch_size, dtypes=dtypes):
                yield Batch(self._dated(frame), start=start)
                start += frame.height
        except SourceError:
            if not dtypes:
                raise
            # a value that does not fit the fitted type: read the model's columns as text from where it failed,
            # so the model's own checks report the row and the value
            text: dict[str, pl.DataType] = {name: pl.String() for name in dtypes}
            seen = 0  # rows of the text read passed so far
            for frame in iter_batches(self.path, batch_size=self.batch_size, dtypes=text):
                if seen + frame.height > start:
                    rest = _retyped(frame.slice(max(0, start - seen)), dtypes)
                    yield Batch(self._dated(rest), start=start)
                    start += rest.height
                seen += frame.height

    def _dated(self, frame: pl.DataFrame) -> pl.DataFrame:
        return parse_date_columns(frame, self.dates)

    def commit(self, batch: Batch) -> None:
        return None

    def close(self) -> None:
        return None


def type_text_columns(frame: pl.DataFrame, dtypes: dict[str, pl.DataType], dates: tuple[str, ...] = ()) -> pl.DataFrame:
    """Text columns typed as a model knows them, as :class:`FileSource` does for text files: ``dtypes`` where every
    value fits (else the column stays text and the model's checks name the row), ``dates`` parsed where every
    value reads as a date. For engines that read text themselves (Spark)."""
    return parse_date_columns(_retyped(frame, dtypes), dates)


def _retyped(frame: pl.DataFrame, dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    """Text columns back to their types where every value fits (the batches keep one schema); a column with a
    value that does not fit stays text, for the model's checks to name the row."""
    out = []
    for name, dtype in dtypes.items():
        if name in frame.columns and frame.schema[name] == pl.String and dtype != pl.String:
            try:
                out.append(frame.get_column(name).str.strip_chars().cast(dtype, strict=True))
            except pl.exceptions.PolarsError:
                continue
    return frame.with_columns(out) if out else frame


def warn_other_separator(path: str | Path, columns: list[str]) -> None:
    """A ';'- or tab-separated file read as CSV becomes one wide column; say so instead of fitting on it."""
    for name in columns:
        for sep, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in name:
                warnings.warn(
                    f"{path}: column {name[:60]!r} holds {label}s: the file looks {label}-separated, but CSV files "
                    "are read comma-separated; convert it to commas (or Parquet) and fit again",
                    SegscopeWarning,
                    stacklevel=3,
                )
                return
