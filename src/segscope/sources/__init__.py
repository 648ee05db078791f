"""Everything that produces records as Polars frames: files (lazy scans), in-memory frames, and Kafka topics
(``sources.kafka``), all behind one contract (:class:`~segscope.sources.base.Source`). The names of the file and
memory sources are imported on first use (a stream reads no files)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segscope._deps import lazy_names
from segscope.sources.base import Batch, DeadLetter, Source

if TYPE_CHECKING:
    from segscope.sources.files import FileSource, count_rows, iter_batches, read_file, scan_file
    from segscope.sources.memory import FrameSource

__all__ = [
    "Batch",
    "DeadLetter",
    "FileSource",
    "FrameSource",
    "Source",
    "count_rows",
    "iter_batches",
    "read_file",
    "scan_file",
]

_FILES = ("FileSource", "count_rows", "iter_batches", "read_file", "scan_file")
_LAZY = {name: "segscope.sources.files" for name in _FILES}
_LAZY["FrameSource"] = "segscope.sources.memory"


__getattr__ = lazy_names(__name__, _LAZY)
