"""Everything that consumes scored frames: files (atomic), stdout, memory, and Kafka topics (``sinks.kafka``). The
names of the file and memory sinks are imported on first use (a stream writes no files)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segscope._deps import lazy_names
from segscope.sinks.base import Sink

if TYPE_CHECKING:
    from segscope.sinks.files import FileSink, StdoutSink, open_sink, write_frame
    from segscope.sinks.memory import ListSink

__all__ = ["FileSink", "ListSink", "Sink", "StdoutSink", "open_sink", "write_frame"]

_LAZY = {name: "segscope.sinks.files" for name in ("FileSink", "StdoutSink", "open_sink", "write_frame")}
_LAZY["ListSink"] = "segscope.sinks.memory"


__getattr__ = lazy_names(__name__, _LAZY)
