"""Reading an Arrow IPC file someone else may have written, with a bound on what it unpacks to.

An Arrow file's buffers may be compressed (LZ4 or Zstandard); Arrow allocates each buffer's declared unpacked size
before it looks at the data, so a file of a megabyte can ask for gigabytes. Each compressed buffer starts with its
unpacked length (a little-endian int64, -1 when stored as is), and the file's footer lists every record batch with
its message; :func:`read_arrow_file` sums those lengths over the batches the footer lists (the ones Arrow then
reads) and refuses the file before anything is unpacked when the sum passes the bound. The footer and each message
are FlatBuffers (``format/File.fbs``, ``Message.fbs`` and ``Schema.fbs`` in Arrow's repository); the few fields read
here are located by hand rather than with generated code.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

_MAGIC = b"ARROW1"
_RECORD_BATCH = 3  # MessageHeader union: Schema 1, DictionaryBatch 2, RecordBatch 3


class ArrowFileError(ValueError):
    """The bytes are not an Arrow file this reader accepts (the message says why)."""


class _Flat:
    """Bounds-checked reads of the FlatBuffer fields this module needs."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.start, self.end = data, start, end

    def _unpack(self, fmt: str, pos: int) -> int:
        if pos < self.start or pos + struct.calcsize(fmt) > self.end:
            raise ArrowFileError("a FlatBuffer offset points outside its message")
        value: int = struct.unpack_from(fmt, self.data, pos)[0]
        return value

    def root(self) -> int:
        return self.start + self._unpack("<I", self.start)

    def field(self, table: int, index: int) -> int | None:
        """The position of a table's field ``index``, or None when the field is absent."""
        vtable = table - self._unpack("<i", table)
        size = self._unpack("<H", vtable)
        if 4 + 2 * index >= size:
            return None
        offset = self._unpack("<H", vtable + 4 + 2 * index)
        return table + offset if offset else None

    def target(self, pos: int) -> int:
        """Where an offset field (a table or a vector) at ``pos`` points."""
        return pos + self._unpack("<I", pos)

    def int64(self, pos: int) -> int:
        return self._unpack("<q", pos)

    def int32(self, pos: int) -> int:
        return self._unpack("<i", pos)

    def uint8(self, pos: int) -> int:
        return self._unpack("<B", pos)

    def vector(self, table: int, index: int, item: int) -> list[int]:
        """The positions of a vector-of-structs field's items (``item`` bytes each); [] when absent."""
        pos = self.field(table, index)
        if pos is None:
            return []
        at = self.target(pos)
        count = self._unpack("<I", at)
        if at + 4 + count * item > self.end:
            raise ArrowFileError("a FlatBuffer vector runs past its message")
        return [at + 4 + i * item for i in range(count)]


def unpacked_bytes(data: bytes) -> int:
    """What the record batches of the Arrow file ``data`` unpack to, summed from the lengths their compressed
    buffers declare (stored buffers count as their size); :class:`ArrowFileError` when the file is not laid out
    as an Arrow file."""
    if len(data) < 2 * len(_MAGIC) + 8 or not data.startswith(_MAGIC) or not data.endswith(_MAGIC):
        raise ArrowFileError("no Arrow file magic at its start and end")
    footer_size = struct.unpack_from("<i", data, len(data) - len(_MAGIC) - 4)[0]
    footer_end = len(data) - len(_MAGIC) - 4
    if not 0 < footer_size <= footer_end - 8:
        raise ArrowFileError("its footer length is out of range")
    footer = _Flat(data, footer_end - footer_size, footer_end)
    top = footer.root()
    if footer.vector(top, 2, 24):
        raise ArrowFileError("it holds dictionary batches, which segscope never writes")
    total = 0
    for block in footer.vector(top, 3, 24):  # Block: offset int64, metaDataLength int32, pad, bodyLength int64
        offset, meta_length, body_length = footer.int64(block), footer.int32(block + 8), footer.int64(block + 16)
        if offset < 8 or meta_length < 8 or body_length < 0 or offset + meta_length + body_length > footer.start:
            raise ArrowFileError("a record batch's block lies outside the file")
        prefix = 8 if data[offset : offset + 4] == b"\xff\xff\xff\xff" else 4
        message = _Flat(data, offset + prefix, offset + meta_length)
        root = message.root()
        type_at, header_at = message.field(root, 1), message.field(root, 2)
        if type_at is None or header_at is None or message.uint8(type_at) != _RECORD_BATCH:
            raise ArrowFileError("a block of the footer is not a record batch")
        batch = message.target(header_at)
        buffers = message.vector(batch, 2, 16)  # Buffer: offset int64, length int64
        compressed = message.field(batch, 3) is not None
        body = offset + meta_length
        for buffer in buffers:
            start, length = message.int64(buffer), message.int64(buffer + 8)
            if start < 0 or length < 0 or start + length > body_length:
                raise ArrowFileError("a buffer lies outside its record batch")
            if not compressed or length == 0:
                total += length
                continue
            if length < 8:
                raise ArrowFileError("a compressed buffer is shorter than its length prefix")
            declared = struct.unpack_from("<q", data, body + start)[0]
            if declared < -1:
                raise ArrowFileError("a compressed buffer declares a negative length")
            total += length - 8 if declared == -1 else declared
    return total


def read_arrow_file(data: bytes, limit: int) -> pa.Table:
    """The table in the Arrow file ``data``, once what it unpacks to is known to be at most ``limit`` bytes;
    :class:`ArrowFileError` (saying how much) otherwise. Arrow's own errors on damaged data pass through."""
    import pyarrow as pa

    need = unpacked_bytes(data)
    if need > limit:
        raise ArrowFileError(
            f"its buffers unpack to {need:,} bytes, more than the {limit:,} allowed for a file of {len(data):,} bytes"
        )
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()
