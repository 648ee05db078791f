"""Everything that consumes scored frames: files (atomic), stdout, and an in-memory sink for tests."""

from segscope.sinks.files import FileSink, ListSink, Sink, open_sink

__all__ = ["FileSink", "ListSink", "Sink", "open_sink"]
