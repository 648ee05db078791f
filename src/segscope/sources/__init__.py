"""Everything that produces Polars frames: files (lazy scans) and in-memory frames."""

from segscope.sources.files import count_rows, detect_format, iter_batches, read_file, scan_file

__all__ = ["count_rows", "detect_format", "iter_batches", "read_file", "scan_file"]
