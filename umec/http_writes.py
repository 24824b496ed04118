"""One ``send()`` per response: the writes of one turn of the event loop leave together.

uvicorn's httptools protocol writes a response's status line and headers, then its body, as
two ``transport.write`` calls, and uvloop sends each at once: two system calls and two TCP
segments for every small JSON answer, each of which, on loopback or a LAN, also runs the
receiver's side of TCP. :class:`CoalescedWrites` stands between the protocol and the socket's
transport: a write is held until the end of the loop's current turn (``call_soon``), joined
with whatever else was written in that turn, and sent as one. A response whose head and body
are written in one step of its task (every non-streaming response) is one ``send()``.

Bounds: once more than :data:`HOLD_LIMIT` bytes are held they are written at once, so a large
or streaming body reaches the real transport (and its flow control, which pauses the writer)
after at most that much; ``close()`` and ``write_eof()`` write what is held first; ``abort()``
drops it, as the real transport drops its own buffer. Everything else goes straight to the
real transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

HOLD_LIMIT = 64 << 10


class CoalescedWrites(asyncio.Transport):
    """A transport that joins the writes of one loop turn (module doc)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    # -- writes ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes > HOLD_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Write what is held (nothing once the connection is closing: it would be lost)."""
        if not self._held:
            return
        data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
        self._held.clear()
        self._held_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    # -- the connection ---------------------------------------------------------------------

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()
