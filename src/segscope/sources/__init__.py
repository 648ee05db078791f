"""Everything that produces records as Polars frames: files (lazy scans), in-memory frames, and Kafka topics
(``sources.kafka``), all behind one contract (:class:`~segscope.sources.base.Source`)."""

from segscope.sources.base import Batch, DeadLetter, Source
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
