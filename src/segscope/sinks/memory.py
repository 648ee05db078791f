"""Scored frames collected in memory: for tests and notebooks."""

from __future__ import annotations

import polars as pl

from segscope.sources.base import Batch

__all__ = ["ListSink"]


class ListSink:
    """Keeps every written frame; :meth:`frame` concatenates them."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.closed = False

    def write(self, scored: pl.DataFrame, batch: Batch | None = None) -> None:
        self.frames.append(scored)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.frames.clear()

    def frame(self) -> pl.DataFrame:
        return pl.concat(self.frames, how="vertical") if self.frames else pl.DataFrame()
