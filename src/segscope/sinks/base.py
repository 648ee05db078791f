"""The sink contract: ``write(scored, batch)`` for every scored batch, ``flush()`` until everything written so far
is safe (a file's bytes handed over, a broker's acknowledgements received), then ``close()``; ``abort()`` on
failure leaves nothing half-written behind."""

from __future__ import annotations

from typing import Protocol

import polars as pl

from segscope.sources.base import Batch

__all__ = ["Sink"]


class Sink(Protocol):
    def write(self, scored: pl.DataFrame, batch: Batch | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...
