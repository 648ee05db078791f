"""Everything that consumes scored frames: files (atomic), stdout, memory, and Kafka topics (``sinks.kafka``)."""

from segscope.sinks.base import Sink
from segscope.sinks.files import FileSink, StdoutSink, open_sink, write_frame
from segscope.sinks.memory import ListSink

__all__ = ["FileSink", "ListSink", "Sink", "StdoutSink", "open_sink", "write_frame"]
