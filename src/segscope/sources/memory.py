"""An in-memory frame as a source (notebooks, tests, and anything that already holds a Polars frame)."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from segscope.sources.base import Batch

__all__ = ["FrameSource"]


class FrameSource:
    """Yields ``frame`` in batches of at most ``batch_size`` rows."""

    def __init__(self, frame: pl.DataFrame, *, batch_size: int = 200_000) -> None:
        self.frame = frame
        self.batch_size = batch_size

    @property
    def schema(self) -> pl.Schema:
        return self.frame.schema

    def open(self) -> None:
        return None

    def iter_batches(self) -> Iterator[Batch]:
        for start in range(0, self.frame.height, self.batch_size):
            yield Batch(self.frame.slice(start, self.batch_size), start=start)

    def commit(self, batch: Batch) -> None:
        return None

    def close(self) -> None:
        return None
