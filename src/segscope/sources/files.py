"""Parquet, CSV and NDJSON files as lazy Polars scans, so large files are read in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from segscope._typing import FileFormat
from segscope.exceptions import SourceError

__all__ = ["count_rows", "detect_format", "iter_batches", "read_file", "sample_rows", "scan_file"]

_EXTENSIONS: dict[str, FileFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}

#: CSV type inference looks at this many rows; a column that changes type later is reported clearly.
CSV_INFER_ROWS = 50_000


def detect_format(path: str | Path) -> FileFormat:
    """Return the file format implied by the extension of ``path``."""
    suffix = Path(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        known = ", ".join(sorted(_EXTENSIONS))
        raise SourceError(f"{path}: unknown file extension '{suffix or '(none)'}'; use one of {known}") from None


def _describe(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def scan_file(path: str | Path) -> pl.LazyFrame:
    """Lazily scan a data file; problems with the file itself are raised here, not at collect time."""
    path = Path(path)
    fmt = detect_format(path)
    if not path.exists():
        raise SourceError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory; pass a data file (.parquet, .csv, .ndjson)")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty; pass a file with a header and at least one row")
    try:
        if fmt == "parquet":
            lf = pl.scan_parquet(path)
        elif fmt == "csv":
            lf = pl.scan_csv(path, infer_schema_length=CSV_INFER_ROWS, try_parse_dates=True)
        else:
            lf = pl.scan_ndjson(path, infer_schema_length=CSV_INFER_ROWS)
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SourceError(f"{path}: cannot read it as {fmt} ({_describe(exc)}); check the file") from None
    if len(schema) == 0:
        raise SourceError(f"{path}: the file has no columns; pass a file with a header and at least one row")
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
    """Read a whole data file into memory."""
    lf = scan_file(path)
    if columns is not None:
        lf = lf.select(columns)
    frame = _collect(lf, path)
    if frame.height == 0:
        raise SourceError(f"{path}: the file has a header but no rows; pass a file with at least one row")
    return frame


def count_rows(path: str | Path) -> int:
    """Count rows without loading the data."""
    return int(_collect(scan_file(path).select(pl.len()), path).item())


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
    return _collect(lf.drop("__segscope_row"), path, streaming=True)


def iter_batches(path: str | Path, *, batch_size: int = 200_000) -> Iterator[pl.DataFrame]:
    """Yield the file as frames of at most ``batch_size`` rows, in file order, in bounded memory."""
    lf = scan_file(path)
    try:
        for batch in lf.collect_batches(chunk_size=batch_size, maintain_order=True):
            if batch.height:
                yield from batch.iter_slices(batch_size) if batch.height > batch_size else (batch,)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{path}: cannot read it ({_describe(exc)}); check the file") from None
